"""Model checkpoints: one ``.npz`` per committed version, written atomically.

A checkpoint holds the model and the server optimizer's state (momentum, moments) after
that version, so a restarted coordinator continues exactly where the ledger says it was.
Write to a temporary file in the same folder, fsync it, ``os.replace`` it into place and
fsync the folder: after a crash a checkpoint is either whole or absent, never torn.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedq.messages.codec import Weights


def checkpoint_path(folder: Path, version: int) -> Path:
    return folder / f"model-v{version:06d}.npz"


def save_checkpoint(
    folder: Path, version: int, weights: Weights, state: Mapping[str, np.ndarray] | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(folder, version)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # Positional keys keep the model's order; names travel alongside (a tensor name
            # may hold any character, so none is used as a key).
            state = dict(state or {})
            arrays: dict[str, Any] = {f"arr_{i}": w for i, w in enumerate(weights.values())}
            arrays |= {f"state_{i}": a for i, a in enumerate(state.values())}
            arrays["__names__"] = np.array(list(weights), dtype=str)
            arrays["__state_names__"] = np.array(list(state), dtype=str)
            np.savez(f, **arrays)
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
    """The model of a checkpoint."""
    with np.load(path, allow_pickle=False) as data:
        names = [str(n) for n in data["__names__"]]
        return {name: data[f"arr_{i}"] for i, name in enumerate(names)}


def load_optimizer_state(path: Path) -> dict[str, np.ndarray]:
    """The server optimizer's state saved with a checkpoint (empty if it had none)."""
    with np.load(path, allow_pickle=False) as data:
        if "__state_names__" not in data:
            return {}
        names = [str(n) for n in data["__state_names__"]]
        return {name: data[f"state_{i}"] for i, name in enumerate(names)}
