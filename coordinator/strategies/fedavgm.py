"""FedAvgM (Hsu et al. 2019): server momentum, m = momentum * m + delta; theta += lr * m.

The momentum buffer is the optimizer's state (float32, keyed ``m.<tensor name>`` as in
:mod:`~.adaptive`), starting at zero, so the first step is FedAvg's with rate lr.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedq.coordinator.strategies.adaptive import MomentOptimizer, check_rate
from fedq.coordinator.strategies.base import Weights


class FedAvgM(MomentOptimizer):
    name = "fedavgm"
    moments = ("m",)

    def __init__(self, lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__()
        self.lr = check_rate("lr", lr)
        self.momentum = check_rate("momentum", momentum, below_one=True)

    def step(self, weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Weights:
        buffers = self.buffers_for(weights)
        momentum = buffers["m"]
        new: Weights = {}
        for name, w in weights.items():
            m = self.momentum * momentum[name] + np.asarray(delta[name], dtype=np.float32)
            momentum[name] = m
            new[name] = (w + self.lr * m).astype(w.dtype, copy=False)
        self.keep(buffers)
        return new
