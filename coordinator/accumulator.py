"""Streaming weighted mean of deltas: O(model size) memory however many updates arrive.

Pure numpy. ``add`` folds one update in place; nothing of the update is kept, so the
message body can be released as soon as ``add`` returns.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedq.messages.codec import Weights


class WeightedMeanAccumulator:
    """sum_k w_k * delta_k and sum_k w_k, in float32 buffers shaped like the model."""

    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        self._sums = {name: np.zeros(t.shape, dtype=np.float32) for name, t in template.items()}
        self._scratch = {name: np.empty(t.shape, dtype=np.float32) for name, t in template.items()}
        self.total_weight = 0.0
        self.count = 0

    def add(self, delta: Mapping[str, np.ndarray], weight: float) -> None:
        """Fold ``weight * delta`` in. ``delta`` must match the template (validated before)."""
        assert weight > 0, "a FedAvg weight is a positive example count"
        for name, total in self._sums.items():
            scratch = self._scratch[name]
            np.multiply(delta[name], np.float32(weight), out=scratch, casting="unsafe")
            total += scratch
        self.total_weight += weight
        self.count += 1

    def mean(self) -> Weights:
        assert self.count > 0, "mean of no updates"
        scale = np.float32(1.0 / self.total_weight)
        return {name: total * scale for name, total in self._sums.items()}
