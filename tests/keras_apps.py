"""Tiny Keras apps for tests, importable by a ``fedq`` subprocess as ``tests.keras_apps:NAME``:
a Sequential model with batch normalization and a subclassed model, on synthetic data.

The data is shifted and scaled (mean 3, std 2 per feature), so that batch-norm moving
statistics trained on it move far from their initial 0 and 1. Partitions have unequal
sizes (participant i of n holds ``ROWS_PER_PART * (i + 1)`` rows), so that an
example-weighted mean differs from a plain one.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from fedq.apps.keras_app import Arrays, KerasApp, import_keras
from fedq.participant.app import Partition, TrainConfig

keras = import_keras()

SEED = 7
FEATURES = 6
ROWS_PER_PART = 60
_TRUE = np.array([1.0, -1.5, 0.5, 2.0, -0.7, 0.3], dtype=np.float32)


@functools.cache
def _dataset(rows: int, seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, FEATURES)).astype(np.float32)
    y = (z @ _TRUE > 0).astype(np.float32).reshape(-1, 1)
    return 3.0 + 2.0 * z, y


def load_partition(partition: Partition) -> Arrays:
    """Disjoint slices of one pool, participant i's of ``ROWS_PER_PART * (i + 1)`` rows."""
    n = partition.count
    x, y = _dataset(ROWS_PER_PART * n * (n + 1) // 2, SEED)
    start = ROWS_PER_PART * partition.index * (partition.index + 1) // 2
    stop = start + ROWS_PER_PART * (partition.index + 1)
    return x[start:stop], y[start:stop]


def load_test() -> Arrays:
    return _dataset(400, SEED + 1)


def _compile(model: Any) -> Any:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_bn_model() -> Any:
    return _compile(
        keras.Sequential(
            [
                keras.Input(shape=(FEATURES,)),
                keras.layers.Dense(16),
                keras.layers.BatchNormalization(momentum=0.9),
                keras.layers.ReLU(),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
    )


Model: Any = keras.Model


@keras.saving.register_keras_serializable(package="fedq_tests")
class SmallNet(Model):  # type: ignore[misc]
    """A subclassed model: no weights until called; registered, with a config, so that a
    saved one loads back."""

    def __init__(self, hidden: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden = hidden
        self.norm = keras.layers.BatchNormalization(momentum=0.9)
        self.inner = keras.layers.Dense(hidden, activation="relu")
        self.out = keras.layers.Dense(1, activation="sigmoid")

    def call(self, x: Any) -> Any:
        return self.out(self.inner(self.norm(x)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "hidden": self.hidden}


class Unregistered(SmallNet):
    """Keras saves it, but cannot load it back: it is not registered as serializable."""


def build_unregistered_model() -> Any:
    model = Unregistered()
    model(np.zeros((1, FEATURES), np.float32))
    return _compile(model)


def build_subclassed_model() -> Any:
    model = SmallNet()
    model(np.zeros((1, FEATURES), np.float32))  # built: its weights exist before any data
    return _compile(model)


def build_unbuilt_subclassed_model() -> Any:
    return _compile(SmallNet())


TRAIN = TrainConfig(epochs=5, batch_size=16)
bn_app = KerasApp(build_bn_model, load_partition, load_test, seed=SEED, train_config=TRAIN)
subclassed_app = KerasApp(
    build_subclassed_model, load_partition, load_test, seed=SEED, train_config=TRAIN
)
unbuilt_app = KerasApp(build_unbuilt_subclassed_model, load_partition, load_test, seed=SEED)
unregistered_app = KerasApp(build_unregistered_model, load_partition, load_test, seed=SEED)
