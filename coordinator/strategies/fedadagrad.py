"""FedAdagrad: v = v + delta^2, so steps shrink where the model has moved a lot (beta2 unused)."""

from __future__ import annotations

import numpy as np

from fedq.coordinator.strategies.adaptive import AdaptiveOptimizer


class FedAdagrad(AdaptiveOptimizer):
    name = "fedadagrad"

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        v_new: np.ndarray = v + np.square(delta)
        return v_new
