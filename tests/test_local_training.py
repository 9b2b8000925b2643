"""Local training options on a real Keras model: fresh or kept optimizer, learning rate,
momentum and FedProx's proximal term."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedq.apps.keras_app import Arrays, KerasApp, import_keras
from fedq.messages.codec import Weights
from fedq.participant.app import AppError, Partition, TrainConfig
from tests.conftest import BROKER_URL
from tests.helpers import run_fedq
from tests.test_cli import one_line_error

pytestmark = [pytest.mark.broker, pytest.mark.processes, pytest.mark.keras]

SAMPLES, FEATURES, CLASSES = 256, 8, 3


def data(_: Partition | None = None) -> Arrays:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype(np.float32)
    y = (x[:, :CLASSES].argmax(axis=1)).astype(np.int64)
    return x, y


def make_app(optimizer: str = "sgd", momentum: float = 0.0) -> KerasApp:
    def build() -> Any:
        keras = import_keras()
        model = keras.Sequential(
            [
                keras.Input((FEATURES,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(CLASSES, activation="softmax"),
            ]
        )
        opt = (
            keras.optimizers.SGD(learning_rate=0.05, momentum=momentum)
            if optimizer == "sgd"
            else keras.optimizers.Adam(learning_rate=0.01)
        )
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    return KerasApp(build, data, seed=1)


def distance(a: Weights, b: Weights) -> float:
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a)))


def trained(app: KerasApp, config: TrainConfig, start: Weights | None = None) -> Weights:
    import_keras().utils.set_random_seed(3)  # same shuffles for every config compared
    return app.train(start or app.initial_weights(), Partition(), config).weights


def steps(config: TrainConfig) -> int:
    return config.epochs * -(-SAMPLES // config.batch_size)


def optimizer_iterations(app: KerasApp) -> int:
    model = app._model(("train", Partition()))
    return int(model.optimizer.iterations.numpy())


@pytest.mark.parametrize("keep", [False, True])
def test_a_fresh_optimizer_starts_every_round_from_its_initial_state(keep: bool) -> None:
    app = make_app(momentum=0.9)
    config = TrainConfig(epochs=1, batch_size=32, keep_optimizer=keep)
    first = trained(app, config)
    trained(app, config, first)
    # Keras counts the optimizer's steps: fresh restarts the count each round.
    assert optimizer_iterations(app) == steps(config) * (2 if keep else 1)


def test_fedprox_pulls_local_weights_toward_the_global_model() -> None:
    app = make_app()
    start = app.initial_weights()
    base = TrainConfig(epochs=5, batch_size=16, learning_rate=0.1)
    plain = distance(trained(app, base), start)
    prox = distance(trained(app, TrainConfig(**{**base.__dict__, "proximal_mu": 1.0})), start)
    assert prox < 0.8 * plain, (prox, plain)
    # mu back to 0 on the same model: the term is gone again.
    again = distance(trained(app, base), start)
    assert again == pytest.approx(plain, rel=0.05)


def test_learning_rate_and_momentum_come_from_the_config() -> None:
    app = make_app()
    start = app.initial_weights()
    slow = distance(trained(app, TrainConfig(learning_rate=1e-4)), start)
    fast = distance(trained(app, TrainConfig(learning_rate=0.1)), start)
    assert fast > 100 * slow
    moving = make_app()  # compiled without momentum: the flag adds it before the build
    trained(moving, TrainConfig(momentum=0.9))
    model = moving._model(("train", Partition()))
    assert float(model.optimizer.momentum) == pytest.approx(0.9)
    slots = [v for v in model.optimizer.variables if "momentum" in v.path]
    assert slots and any(np.any(v.numpy() != 0) for v in slots)


def norm(weights: Weights) -> float:
    return float(np.sqrt(sum(np.sum(w.astype(np.float64) ** 2) for w in weights.values())))


def test_weight_decay_shrinks_the_weights_as_sgd_with_l2_would() -> None:
    """With SGD, Keras's decoupled decay is PyTorch's L2 weight decay (NIID-Bench's 1e-5):
    a large one pulls every weight toward 0 over the same steps; a second round with
    another value is an error (the train step was built with the first)."""
    base = TrainConfig(epochs=3, batch_size=32)
    plain = norm(trained(make_app(), base))
    decaying = make_app()
    decayed = norm(trained(decaying, TrainConfig(epochs=3, batch_size=32, weight_decay=0.5)))
    assert decayed < 0.8 * plain, (decayed, plain)
    with pytest.raises(AppError, match="cannot change between rounds"):
        trained(decaying, TrainConfig(weight_decay=0.1))


def test_evaluate_local_holds_out_a_tenth_and_reports_the_global_model_on_it() -> None:
    """Before training, the model it was sent is evaluated on a held-out tenth of the
    participant's data (the same tenth each round), reported as local_*; training uses
    the rest."""
    app = make_app()
    start = app.initial_weights()
    result = app.train(start, Partition(), TrainConfig(evaluate_local=True))
    assert result.num_examples == SAMPLES - round(SAMPLES / 10)
    assert {"local_loss", "local_accuracy", "loss", "accuracy"} <= result.metrics.keys()
    again = app.train(start, Partition(), TrainConfig(evaluate_local=True))
    assert again.metrics["local_loss"] == pytest.approx(result.metrics["local_loss"], rel=1e-6)
    plain = app.train(start, Partition(), TrainConfig())
    assert "local_loss" not in plain.metrics and plain.num_examples == SAMPLES


def test_mistakes_in_the_options_are_one_clear_error() -> None:
    with pytest.raises(AppError, match="has none"):
        trained(make_app("adam"), TrainConfig(momentum=0.9))
    app = make_app()
    trained(app, TrainConfig(momentum=0.5))
    with pytest.raises(AppError, match="cannot change between rounds"):
        trained(app, TrainConfig(momentum=0.9))
    with pytest.raises(AppError, match="must be > 0"):
        TrainConfig(learning_rate=0)
    with pytest.raises(AppError, match=r"\[0, 1\)"):
        TrainConfig(momentum=1.5)
    assert TrainConfig(epochs=2).with_overrides(epochs=None, batch_size=7) == TrainConfig(
        epochs=2, batch_size=7
    )


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--momentum", "2"], "momentum 2.0: must be in [0, 1)"),
        (["--learning-rate", "0"], "learning rate 0.0: must be > 0"),
        (["--proximal-mu", "-1"], "proximal mu -1.0: must be >= 0"),
    ],
)
def test_bad_training_flags_are_one_line(tmp_path: Path, flags: list[str], says: str) -> None:
    result = run_fedq(
        "simulate", "--app", "fedq.apps.synthetic:app", *flags, "--state-dir", str(tmp_path)
    )
    assert says in one_line_error(result)


def test_federated_evaluation_and_weight_decay_on_rabbitmq(tmp_path: Path) -> None:
    """`fedq simulate --evaluate-local --weight-decay` on RabbitMQ: every update carries
    its participant's held-out evaluation of the model it was sent, and `fedq history`
    shows its mean and range per version, and each participant's share of the updates."""
    state = tmp_path / "state"
    run = run_fedq(
        "simulate", "--app", "fedq.apps.dense:app", "-n", "3", "-r", "2", "--evaluate-local",
        "--weight-decay", "1e-5", "--partition-scheme", "labels:2", "--state-dir", str(state),
        "--broker", BROKER_URL, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    history = run_fedq("history", "--state-dir", str(state))
    assert "federated eval" in history.stdout, history.stdout
    assert "folded updates by participant: p0 2 (33%), p1 2 (33%), p2 2 (33%)" in history.stdout
    rows = json.loads(run_fedq("history", "--state-dir", str(state), "--json").stdout)["rounds"]
    for row in rows:
        low, high = row["local_accuracy_range"]
        assert 0 <= low <= row["local_metrics"]["local_accuracy"] <= high <= 1
