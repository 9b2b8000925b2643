"""PyTorch participants: the helper's weights are a module's floating state in a fixed
order, torch stays out of ``import fedq`` and the Keras apps, and a federation of
``fedq.apps.torch_fmnist`` participants learns Fashion-MNIST on RabbitMQ."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the .[torch] extra; CI installs it (a skip fails there)

import torch

import fedq
from fedq.apps.torch_app import TorchApp, load_weights, weights_of
from fedq.participant.app import AppError, Partition, TrainConfig
from tests.conftest import BROKER_URL
from tests.helpers import python_snippets, run_snippet

pytestmark = [pytest.mark.broker, pytest.mark.processes, pytest.mark.keras]


def small_net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.ReLU(), torch.nn.Linear(3, 2)
    )


def test_weights_are_the_floating_state_in_state_dict_order_and_load_back():
    model = small_net()
    weights = weights_of(model)
    floating = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    assert list(weights) == floating  # num_batches_tracked (int64) stays local
    assert "1.running_mean" in weights and "1.num_batches_tracked" not in weights
    assert all(w.dtype == np.float32 for w in weights.values())
    changed = {k: w + 1.0 for k, w in weights.items()}
    other = small_net()
    load_weights(other, changed)
    assert all(np.array_equal(weights_of(other)[k], changed[k]) for k in changed)


def test_weights_that_do_not_fit_are_an_app_error_naming_them():
    weights = weights_of(small_net())
    with pytest.raises(AppError, match=re.escape("missing ['3.bias']")):
        load_weights(small_net(), {k: v for k, v in weights.items() if k != "3.bias"})
    bad = dict(weights) | {"0.weight": np.zeros((2, 2), np.float32)}
    with pytest.raises(AppError, match=re.escape("0.weight: shape")):
        load_weights(small_net(), bad)


def test_version_zero_is_the_same_in_every_process_and_leaves_the_callers_rng_alone():
    data = (np.zeros((4, 4), np.float32), np.zeros(4, np.int64))
    app = TorchApp(small_net, lambda p: data, seed=7)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = app.initial_weights()
    assert torch.rand(1) == before  # the caller's generator did not move
    again = TorchApp(small_net, lambda p: data, seed=7).initial_weights()
    assert all(np.array_equal(first[k], again[k]) for k in first)


def test_importing_fedq_and_the_keras_apps_imports_no_torch():
    code = (
        "import sys, fedq, fedq.apps.dense, fedq.apps.fmnist, fedq.apps.keras_app; "
        "fedq.simulate; fedq.KerasApp; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.broker
def test_a_federation_of_torch_fmnist_participants_learns_on_rabbitmq(federation, tmp_path):
    """Three participants, 2,000 training images each, three rounds on RabbitMQ: the
    held-out accuracy goes from chance to well above it."""
    from fedq.apps.torch_fmnist import app as shipped
    from fedq.apps.torch_fmnist import make_app

    app = make_app(train_rows=2000, test_rows=2000)
    app.check()
    start = app.evaluate(app.initial_weights())
    assert start is not None and start["accuracy"] < 0.2  # ten classes: chance is 0.1
    assert shipped.train_config == TrainConfig(
        epochs=10, batch_size=64, learning_rate=0.01, momentum=0.9
    )  # NIID-Bench's; this test trains less to stay quick
    result = fedq.simulate(
        app=app,
        participants=3,
        rounds=3,
        broker_url=BROKER_URL,
        federation=federation,
        state_dir=tmp_path,
        epochs=2,
        batch_size=32,
        learning_rate=0.05,
    )
    accuracy = [h["metrics"]["accuracy"] for h in result.history]
    assert len(accuracy) == 3
    assert result.final_metrics["accuracy"] > 0.6, accuracy
    assert all(h["n_updates"] == 3 for h in result.history)
    assert Partition(0, 3) in app._data  # the participants trained this app's module


DOC = Path(__file__).resolve().parent.parent / "docs" / "pytorch.md"


@pytest.mark.parametrize("index", range(len(python_snippets(DOC))))
def test_every_snippet_of_the_pytorch_doc_runs(index, tmp_path):
    out = run_snippet(python_snippets(DOC)[index], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
