"""The coordinate-wise median (Yin et al. 2018): robust to a minority of arbitrary updates.

Each coordinate of the result is the median of that coordinate over the version's
(staleness-scaled) deltas; example counts are ignored, as in the standard rule, so one
participant cannot buy influence by claiming many examples. With an even count the median
is the mean of the two middle values: the trimmed mean that keeps only the middle, which
is how it is computed: a sort along the updates beats ``np.median``, which
bench/aggregate.py measures. It holds every delta (:class:`DeltaStack`).
"""

from __future__ import annotations

import numpy as np

from fedq.coordinator.strategies.base import AggregationContext, Aggregator
from fedq.coordinator.strategies.stack import DeltaStack, StackedAggregation
from fedq.coordinator.strategies.trimmed_mean import trimmed_mean_of_columns


class _MedianAggregation(StackedAggregation):
    def combine(self, stack: DeltaStack) -> np.ndarray:
        cut = (stack.count - 1) // 2  # leaves the middle value, or the middle two
        return stack.reduce_columns(lambda slab: trimmed_mean_of_columns(slab, cut))


class CoordinateMedian(Aggregator):
    name = "median"
    holds_updates = True

    def start(self, context: AggregationContext) -> StackedAggregation:
        return _MedianAggregation(context)
