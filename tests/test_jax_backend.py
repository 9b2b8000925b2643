"""The shipped Keras apps on Keras 3's JAX backend (``KERAS_BACKEND=jax``, extra
``.[jax]``): nothing of fedq changes; a federation on RabbitMQ learns as it does on
TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import BROKER_URL
from tests.helpers import FEDQ, fedq_env

pytestmark = [pytest.mark.broker, pytest.mark.processes, pytest.mark.keras]


def on_jax(*command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = fedq_env() | {"KERAS_BACKEND": "jax"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def test_the_dense_app_runs_on_jax():
    probe = (
        "import fedq.apps.dense as d, keras; d.app.initial_weights(); "
        "print(keras.backend.backend())"
    )
    backend = on_jax(sys.executable, "-c", probe)
    assert backend.stdout.strip().splitlines()[-1] == "jax", backend.stderr


def test_a_federation_learns_on_the_jax_backend(tmp_path):
    report = tmp_path / "report.json"
    run = on_jax(
        *FEDQ, "simulate", "--app", "fedq.apps.dense:app", "-n", "2", "-r", "3",
        "--broker", BROKER_URL, "--state-dir", str(tmp_path / "state"), "--report", str(report),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(report.read_text())
    assert result["rounds_completed"] == 3
    assert result["final_metrics"]["accuracy"] > 0.9, result["final_metrics"]
