"""A user's own aggregator, plugged in as ``--aggregator tests.user_strategy:LargestUpdate``
(used by test_cli): nothing of fedq's but the base class."""

from __future__ import annotations

import numpy as np

from fedq.coordinator.strategies.base import (
    Aggregation,
    AggregationContext,
    Aggregator,
    Delta,
    Weights,
)


class _Largest(Aggregation):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = np.float32(factor)
        self.best: Weights = {}
        self.best_weight = 0.0

    def add(self, delta: Delta, weight: float, scale: float = 1.0) -> None:
        self.count += 1
        if weight > self.best_weight:
            self.best = {k: np.array(v, dtype=np.float32) * scale for k, v in delta.items()}
            self.best_weight = weight

    def result(self) -> Weights:
        return {k: v * self.factor for k, v in self.best.items()}


class LargestUpdate(Aggregator):
    """The update of the participant with the most examples, alone, times ``factor``."""

    name = "largest"

    def __init__(self, factor: float = 1.0) -> None:
        self.factor = factor

    def start(self, context: AggregationContext) -> Aggregation:
        return _Largest(self.factor)
