"""FedAvg's server step: theta_{v+1} = theta_v + lr * delta. Stateless."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedq.coordinator.checkpoint import release_pages
from fedq.coordinator.strategies.base import ServerOptimizer, Weights, blocks


class FedAvg(ServerOptimizer):
    name = "fedavg"

    def __init__(self, lr: float = 1.0) -> None:
        self.lr = float(lr)

    def step(self, weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Weights:
        lr = np.float32(self.lr)
        return {name: _plus_scaled(w, lr, delta[name]) for name, w in weights.items()}


def _plus_scaled(w: np.ndarray, lr: np.float32, delta: np.ndarray) -> np.ndarray:
    """w + lr * delta, written over ``delta`` when it is a writable array of w's dtype (the
    aggregation's result, which nothing else uses): no model-sized temporaries. ``w`` is
    read a block at a time, its pages let go after each when it is mapped from a
    checkpoint, so the step holds one model (the result), not two."""
    if (
        isinstance(delta, np.ndarray)
        and delta.flags.writeable
        and delta.flags.c_contiguous
        and delta.dtype == w.dtype
    ):
        if lr != 1:
            delta *= lr
        out = delta.reshape(-1)
        for start, block in blocks(w.reshape(-1)):
            out[start : start + block.size] += block
            release_pages([w])
        return delta
    return (w + lr * delta).astype(w.dtype, copy=False)
