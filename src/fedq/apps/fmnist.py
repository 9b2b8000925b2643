"""Fashion-MNIST split across participants by the scheme in each one's
:class:`~fedq.participant.app.Partition` (IID unless ``--partition-scheme`` names another;
see :mod:`fedq.participant.partitions`), with either of two CNNs:

- ``fedq.apps.fmnist:app``: conv 16@3x3, conv 32@3x3, FC 64, FC 10; Adam (lr 0.001), one local
  epoch of batches of 32 per round;
- ``fedq.apps.fmnist:niid_cnn``: NIID-Bench's simple CNN (Li et al., ICDE 2022), the model of
  its MNIST-like experiments: conv 6@5x5, max-pool, conv 16@5x5, max-pool, FC 120, FC 84,
  FC 10 with ReLU, 44,426 parameters; SGD (lr 0.01, momentum 0.9), 10 local epochs of
  batches of 64 per round, as NIID-Bench's scripts run it.

Reads the IDX files of Debian's ``dataset-fashion-mnist`` (``FEDQ_FMNIST_DIR`` overrides
the folder). Nothing is downloaded: a machine without the files gets one line naming the
package to install.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from fedq.apps.keras_app import Arrays, KerasApp, import_keras, shard
from fedq.participant.app import AppError, Partition, TrainConfig

SEED = 42
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
#: Local epochs per round of NIID-Bench's image experiments (scripts/*.sh: --epochs=10).
NIID_EPOCHS = 10


def _idx_file(stem: str) -> Path:
    folder = Path(os.environ.get("FEDQ_FMNIST_DIR", DEFAULT_DIR))
    for name in (f"{stem}.gz", stem):
        if (folder / name).exists():
            return folder / name
    raise AppError(
        f"Fashion-MNIST file {stem} not found in {folder}: install Debian's package "
        "`dataset-fashion-mnist` (apt-get install dataset-fashion-mnist) or set FEDQ_FMNIST_DIR"
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format): magic, dims, then big-endian unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise AppError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.cache
def _split(kind: str) -> Arrays:
    images = read_idx(_idx_file(f"{kind}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(f"{kind}-labels-idx1-ubyte"))
    x = (images.astype(np.float32) / 255.0)[..., np.newaxis]
    return x, labels.astype(np.int64)


def build_model() -> Any:
    keras = import_keras()
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_niid_cnn() -> Any:
    """NIID-Bench's ``SimpleCNNMNIST``: 'valid' convolutions take 28x28 to 24x24, pooled to
    12x12, then 8x8, pooled to 4x4: the 16 * 4 * 4 = 256 features of its first FC layer."""
    keras = import_keras()
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(6, 5, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(16, 5, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(120, activation="relu"),
            keras.layers.Dense(84, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def load_train() -> Arrays:
    """Every training image, before the split (``fedq partition`` reads its labels)."""
    return _split("train")


def load_partition(partition: Partition) -> Arrays:
    return shard(load_train(), partition, SEED)


def load_test() -> Arrays:
    return _split("t10k")


def check_files() -> None:
    for kind in ("train", "t10k"):
        for part in ("images-idx3", "labels-idx1"):
            _idx_file(f"{kind}-{part}-ubyte")


app = KerasApp(build_model, load_partition, load_test, seed=SEED, check=check_files)
#: NIID-Bench's simple CNN on the same data and partitions (``--partition-scheme``).
niid_cnn = KerasApp(
    build_niid_cnn,
    load_partition,
    load_test,
    seed=SEED,
    train_config=TrainConfig(epochs=NIID_EPOCHS, batch_size=64),
    check=check_files,
)
