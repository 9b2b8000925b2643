"""``fedq.apps.dense:app``: the seed example. Dense(10, relu) -> Dense(1, sigmoid) on 5 inputs.

Binary cross-entropy with SGD (lr 0.01). Data is synthetic with a fixed seed: 5 standard
normal features, label 1 when a fixed linear score is positive (so a good model reaches
high accuracy); 4,000 training rows split across participants (by the scheme in each one's
:class:`~fedq.participant.app.Partition`, IID unless ``--partition-scheme`` names another;
see :mod:`fedq.participant.partitions`) and 1,000 held out.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from fedq.apps.keras_app import Arrays, KerasApp, import_keras, shard
from fedq.participant.app import Partition, TrainConfig

SEED = 1234
_TRUE_WEIGHTS = np.array([1.5, -2.0, 0.7, 1.0, -0.5], dtype=np.float32)


def build_model() -> Any:
    keras = import_keras()
    model = keras.Sequential(
        [
            keras.Input(shape=(5,)),
            keras.layers.Dense(10, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


@functools.cache
def _dataset(rows: int, seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 5)).astype(np.float32)
    y = (x @ _TRUE_WEIGHTS + 0.1 * rng.standard_normal(rows) > 0).astype(np.float32)
    return x, y.reshape(-1, 1)


def load_train() -> Arrays:
    """Every training row, before the split (``fedq partition`` reads its labels)."""
    return _dataset(4000, SEED)


def load_partition(partition: Partition) -> Arrays:
    return shard(load_train(), partition, SEED)


def load_test() -> Arrays:
    return _dataset(1000, SEED + 1)


app = KerasApp(
    build_model,
    load_partition,
    load_test,
    seed=SEED,
    train_config=TrainConfig(epochs=5, batch_size=16),
)
