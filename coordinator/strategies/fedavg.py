"""FedAvg's server step: theta_{v+1} = theta_v + lr * delta. Stateless."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedq.coordinator.strategies.base import ServerOptimizer, Weights


class FedAvg(ServerOptimizer):
    name = "fedavg"

    def __init__(self, lr: float = 1.0) -> None:
        self.lr = float(lr)

    def step(self, weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Weights:
        lr = np.float32(self.lr)
        return {
            name: (w + lr * delta[name]).astype(w.dtype, copy=False) for name, w in weights.items()
        }
