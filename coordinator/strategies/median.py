"""The coordinate-wise median (Yin et al. 2018): robust to a minority of arbitrary updates.

Each coordinate of the result is the median of that coordinate over the version's
(staleness-scaled) deltas; example counts are ignored, as in the standard rule, so one
participant cannot buy influence by claiming many examples. With an even count the median
is the mean of the two middle values. It holds every delta (:class:`DeltaStack`).
"""

from __future__ import annotations

import numpy as np

from fedq.coordinator.strategies.base import AggregationContext, Aggregator
from fedq.coordinator.strategies.stack import DeltaStack, StackedAggregation


class _MedianAggregation(StackedAggregation):
    def combine(self, stack: DeltaStack) -> np.ndarray:
        return stack.reduce_columns(lambda slab: np.median(slab, axis=0))


class CoordinateMedian(Aggregator):
    name = "median"
    holds_updates = True

    def start(self, context: AggregationContext) -> StackedAggregation:
        return _MedianAggregation(context)
