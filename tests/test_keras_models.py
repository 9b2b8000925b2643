"""Any compiled Keras model federates: batch normalization (its moving statistics are averaged
like every other weight), subclassed models, and NIID-Bench's simple CNN on Fashion-MNIST."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedq.apps.keras_app import KerasApp, import_keras
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.messages.codec import Weights
from fedq.participant.app import AppError, Partition, TrainConfig, TrainResult
from fedq.participant.config import ParticipantConfig
from fedq.participant.scheme import Scheme
from fedq.simulation import SimulationPlan, simulate
from tests.conftest import BROKER_URL
from tests.helpers import run_fedq

pytestmark = pytest.mark.keras

PARTICIPANTS = 3


class Recording:
    """An app that keeps what each participant trained, i.e. what it sent."""

    def __init__(self, app: KerasApp) -> None:
        self.app = app
        self.train_config = app.train_config
        self.sent: list[tuple[Weights, TrainResult]] = []
        self._lock = threading.Lock()

    def initial_weights(self) -> Weights:
        return self.app.initial_weights()

    def evaluate(self, weights: Weights) -> dict[str, float] | None:
        return self.app.evaluate(weights)

    def train(self, weights: Weights, partition: Partition, config: TrainConfig) -> TrainResult:
        base = {k: np.array(v, copy=True) for k, v in weights.items()}
        result = self.app.train(weights, partition, config)
        with self._lock:
            self.sent.append((base, result))
        return result


async def federate(app: Any, federation: str, state: Path, rounds: int) -> None:
    plan = SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=federation,
            participants=PARTICIPANTS,
            rounds=rounds,
            state_dir=state,
            mode="sync",
            linger_seconds=0,
        ),
        participant=ParticipantConfig(federation=federation, participant_id="p"),
        broker_url=BROKER_URL,
    )
    result = await simulate(plan, app)  # the fixture clears the broker
    assert result.rounds_completed == rounds


def model_version(state: Path, version: int) -> Weights:
    return load_checkpoint(checkpoint_path(state / "models", version))


def named(weights: Weights, suffix: str) -> list[str]:
    return [k for k in weights if k.endswith(f":{suffix}")]


@pytest.mark.broker
async def test_batch_norm_statistics_are_the_example_weighted_mean_of_what_participants_sent(
    tmp_path, federation
):
    from tests.keras_apps import bn_app

    app = Recording(bn_app)
    await federate(app, federation, tmp_path, rounds=2)
    v1, v2 = model_version(tmp_path, 1), model_version(tmp_path, 2)
    last = [(base, r) for base, r in app.sent if all(np.array_equal(base[k], v1[k]) for k in v1)]
    assert len(last) == PARTICIPANTS  # round 2: every update was trained from v1
    sizes = sorted(r.num_examples for _, r in last)
    assert len(set(sizes)) == PARTICIPANTS  # unequal: a plain mean would differ
    total = sum(sizes)
    stats = named(v2, "moving_mean") + named(v2, "moving_variance")
    assert len(stats) == 2
    initial = bn_app.initial_weights()

    def fedavg(key: str) -> np.ndarray:
        """v1 plus the example-weighted mean of the deltas: the coordinator's default rule."""
        return v1[key] + sum(r.num_examples * (r.weights[key] - v1[key]) for _, r in last) / total

    for key in stats:
        np.testing.assert_allclose(v2[key], fedavg(key), rtol=1e-5, atol=1e-6)
        plain = np.mean([r.weights[key] for _, r in last], axis=0)
        assert not np.allclose(v2[key], plain, rtol=1e-4)
        # Trained on data of mean 3 and std 2: far from the initial statistics (0 and 1).
        assert np.abs(v2[key] - initial[key]).max() > 0.5
    # Every weight, trainable or not, follows the same rule.
    for key in v2:
        np.testing.assert_allclose(v2[key], fedavg(key), rtol=1e-5, atol=1e-6)


@pytest.mark.broker
async def test_a_subclassed_model_federates_and_learns(tmp_path, federation):
    from tests.keras_apps import subclassed_app

    before = subclassed_app.evaluate(subclassed_app.initial_weights())
    assert before is not None
    await federate(subclassed_app, federation, tmp_path, rounds=3)
    after = subclassed_app.evaluate(model_version(tmp_path, 3))
    assert after is not None
    assert after["accuracy"] >= 0.85 and after["accuracy"] > before["accuracy"] + 0.2
    assert np.isfinite(after["loss"]) and after["loss"] < before["loss"]
    assert named(model_version(tmp_path, 3), "moving_variance")  # its batch norm federates too


def test_an_unbuilt_subclassed_model_is_one_line_saying_to_call_it_on_a_batch(tmp_path):
    result = run_fedq(
        "simulate", "--app", "tests.keras_apps:unbuilt_app", "-n", "2", "--rounds", "1",
        "--federation", "unbuilt", "--state-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "SmallNet without weights" in result.stderr and "on a batch" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_uncompiled_model_is_refused_before_training():
    keras = import_keras()

    def build() -> Any:
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])

    app = KerasApp(build, lambda _: (np.zeros((4, 3)), np.zeros((4, 1))))
    with pytest.raises(AppError, match="not compiled"):
        app.initial_weights()


def test_niid_bench_cnn_has_its_layers_optimizer_and_44426_parameters():
    from fedq.apps.fmnist import build_niid_cnn, niid_cnn

    model = build_niid_cnn()
    assert model.count_params() == 44_426
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense", "Dense",
    ]  # fmt: skip
    convs = [(layer.filters, layer.kernel_size) for layer in model.layers[:4:2]]
    assert convs == [(6, (5, 5)), (16, (5, 5))]
    assert [layer.units for layer in model.layers[5:]] == [120, 84, 10]
    optimizer = model.optimizer
    assert type(optimizer).__name__ == "SGD"
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    assert optimizer.momentum == pytest.approx(0.9)
    assert niid_cnn.train_config.batch_size == 64 and niid_cnn.train_config.epochs == 10


def test_niid_bench_cnn_learns_fashion_mnist():
    from fedq.apps.fmnist import niid_cnn

    start = niid_cnn.initial_weights()
    before = niid_cnn.evaluate(start)
    result = niid_cnn.train(start, Partition(3, 20), TrainConfig(epochs=2, batch_size=64))
    after = niid_cnn.evaluate(result.weights)
    assert before is not None and after is not None
    assert result.num_examples == 3000
    assert after["accuracy"] >= 0.5 and after["accuracy"] > before["accuracy"] + 0.3


SCHEMES = ["dirichlet:0.5", "labels:2", "quantity:0.5", "noise:0.1"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_niid_bench_cnn_trains_on_each_partition_scheme(scheme):
    from fedq.apps import fmnist
    from fedq.participant import partitions

    # The app keeps a partition's data for the process: one partition per scheme here.
    partition = Partition(4 + SCHEMES.index(scheme), 40, Scheme.parse(scheme))
    x, y = fmnist.load_partition(partition)
    wanted = partitions.apply(fmnist.load_train(), partition, Scheme.parse(scheme), fmnist.SEED)
    np.testing.assert_array_equal(x, wanted[0])
    np.testing.assert_array_equal(y, wanted[1])
    start = fmnist.niid_cnn.initial_weights()
    result = fmnist.niid_cnn.train(start, partition, TrainConfig(epochs=1, batch_size=64))
    assert result.num_examples == len(x) > 0 and np.isfinite(result.metrics["loss"])
    assert any(not np.array_equal(result.weights[k], v) for k, v in start.items())
