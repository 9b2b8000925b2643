"""FedAdam: v = beta2 * v + (1 - beta2) * delta^2, an exponential average of delta^2."""

from __future__ import annotations

import numpy as np

from fedq.coordinator.strategies.adaptive import AdaptiveOptimizer


class FedAdam(AdaptiveOptimizer):
    name = "fedadam"

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        v_new: np.ndarray = self.beta2 * v + (1 - self.beta2) * np.square(delta)
        return v_new
