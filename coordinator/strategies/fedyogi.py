"""FedYogi: v = v - (1 - beta2) * delta^2 * sign(v - delta^2).

v moves towards delta^2 by an additive step, so a sudden large delta raises it less
abruptly than Adam's average and v never shrinks faster than (1 - beta2) * delta^2.
"""

from __future__ import annotations

import numpy as np

from fedq.coordinator.strategies.adaptive import AdaptiveOptimizer


class FedYogi(AdaptiveOptimizer):
    name = "fedyogi"

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        squared = np.square(delta)
        v_new: np.ndarray = v - (1 - self.beta2) * squared * np.sign(v - squared)
        return v_new
