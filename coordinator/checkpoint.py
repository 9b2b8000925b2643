"""Model checkpoints: one ``.npz`` per committed version, written atomically.

Write to a temporary file in the same folder, fsync it, ``os.replace`` it into place and
fsync the folder: after a crash a checkpoint is either whole or absent, never torn.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from fedq.messages.codec import Weights


def checkpoint_path(folder: Path, version: int) -> Path:
    return folder / f"model-v{version:06d}.npz"


def save_checkpoint(folder: Path, version: int, weights: Weights) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(folder, version)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # Positional keys keep the model's order; names travel alongside.
            np.savez(f, *weights.values(), __names__=np.array(list(weights)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def load_checkpoint(path: Path) -> Weights:
    with np.load(path, allow_pickle=False) as data:
        names = [str(n) for n in data["__names__"]]
        return {name: data[f"arr_{i}"] for i, name in enumerate(names)}
