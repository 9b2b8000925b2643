"""``--mlflow-uri``: an MLflow run per coordinator, read back with MLflow's own client; a
tracking server that fails is one warning and the federation goes on; MLflow missing is one
line saying what to install."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fedq.coordinator.records import VersionSummary
from fedq.mlflow_tracking import metric_name, version_metrics
from tests.conftest import BROKER_URL
from tests.helpers import FEDQ, fedq_env, free_port

mlflow_tracking = pytest.importorskip("mlflow.tracking", reason="the mlflow extra")


def fedq(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``fedq ARGS`` run in ``cwd``: MLflow keeps a SQLite store's artifacts in ./mlruns."""
    return subprocess.run(
        [*FEDQ, *args], capture_output=True, text=True, timeout=600, cwd=cwd,
        env=fedq_env() | (env or {}),
    )  # fmt: skip


@pytest.mark.keras
@pytest.mark.broker
def test_simulate_logs_settings_a_point_per_version_and_the_final_model(tmp_path, federation):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = fedq(
        "simulate", "--app", "fedq.apps.dense:app", "-n", "2", "--rounds", "2",
        "--broker", BROKER_URL, "--federation", federation, "--state-dir", str(tmp_path),
        "--quorum", "2", "--learning-rate", "0.05", "--mlflow-uri", store,
        "--mlflow-experiment", "fedq-tests", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    client = mlflow_tracking.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("fedq-tests")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == federation
    tags = run.data.tags
    assert tags["fedq.federation"] == federation and tags["fedq.mode"] == "quorum"
    assert tags["fedq.version"]
    params = run.data.params
    assert (params["mode"], params["participants"], params["rounds"]) == ("quorum", "2", "2")
    assert (params["quorum"], params["aggregator"], params["train.learning_rate"]) == (
        "2", "mean", "0.05",
    )  # fmt: skip

    history = history_json(tmp_path / federation)
    assert [row["version"] for row in history] == [1, 2]

    def series(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    for key in ("accuracy", "loss"):
        points = series(key)
        assert [step for step, _ in points] == [1, 2]  # one point per version
        expected = [row["metrics"][key] for row in history]
        assert [value for _, value in points] == pytest.approx(expected, rel=1e-6)
    assert series("updates") == [(1, 2.0), (2, 2.0)]
    assert series("participants") == [(1, 2.0), (2, 2.0)]
    assert series("staleness_max") == [(1, 0.0), (2, 0.0)]
    assert [step for step, _ in series("local/loss")] == [1, 2]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert artifacts == {"model/model-v000002.npz", "model/model-v000002.keras"}


def history_json(state_dir: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [*FEDQ, "history", "--state-dir", str(state_dir), "--json"],
        capture_output=True, text=True, timeout=120, env=fedq_env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rounds: list[dict[str, Any]] = json.loads(out.stdout)["rounds"]
    return rounds


def test_a_tracking_server_that_fails_is_one_warning_and_the_federation_goes_on(tmp_path):
    """Nothing listens at the URI (set through its FEDQ_* variable): every call fails."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = fedq(
        "simulate", "--app", "fedq.apps.synthetic:app", "-n", "2", "--rounds", "2",
        "--state-dir", str(tmp_path),
        cwd=tmp_path, env={"FEDQ_MLFLOW_URI": nowhere, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "round 2: model v2 from 2 updates" in result.stderr  # the live view's line
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, result.stderr
    assert "failed, the federation goes on without it" in warnings[0]
    assert "Traceback" not in result.stderr


def test_mlflow_missing_is_one_line_saying_what_to_install(tmp_path):
    """An ``mlflow`` package that cannot be imported, first on the path, stands for none."""
    shadow = tmp_path / "shadow" / "mlflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no mlflow here')\n")
    result = fedq(
        "simulate", "--app", "fedq.apps.synthetic:app", "-n", "1", "--rounds", "1",
        "--state-dir", str(tmp_path / "state"), "--mlflow-uri", "sqlite:///x.db",
        cwd=tmp_path, env={"PYTHONPATH": str(shadow.parent)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'fedq[mlflow]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_metrics_come_from_the_ledgers_record_and_names_stay_one_segment():
    row = VersionSummary(
        version=3, round=3, closed_by="quorum", n_updates=3, participants=["a", "a", "b"],
        rejected={"duplicate": 2, "stale": 1}, seconds=1.5, metrics={"accuracy": 0.75},
        updates=[("a", 2, 0), ("a", 1, 1), ("b", 0, 2)], epsilon=0.5, update_bytes=30,
        local_metrics={"loss": 0.25, "../x": 1.0},
    )  # fmt: skip
    assert version_metrics(row) == {
        "accuracy": 0.75, "updates": 3.0, "participants": 2.0, "rejected": 1.0,
        "seconds": 1.5, "update_bytes": 30.0, "staleness_mean": 1.0, "staleness_max": 2.0,
        "epsilon": 0.5, "local/loss": 0.25, "local/.._x": 1.0,
    }  # fmt: skip
    assert metric_name("..") == "_" and metric_name("a/b") == "a_b"
