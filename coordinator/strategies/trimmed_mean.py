"""The coordinate-wise trimmed mean (Yin et al. 2018).

Per coordinate, the floor(trim_fraction * k) largest and as many smallest of the k
(staleness-scaled) values are dropped and the rest averaged, unweighted like the median.
Because trim_fraction < 0.5, 2 * floor(trim_fraction * k) < k: at least one value always
remains (the cut is also capped at (k - 1) // 2 to keep that true whatever the rounding).
With few updates (k < 1 / trim_fraction) nothing is trimmed and the rule is the plain
unweighted mean: choose the quorum with the trimming you want in mind.
"""

from __future__ import annotations

import math

import numpy as np

from fedq.coordinator.strategies.base import AggregationContext, Aggregator, StrategyError
from fedq.coordinator.strategies.stack import DeltaStack, StackedAggregation


def trimmed_mean_of_columns(slab: np.ndarray, cut: int) -> np.ndarray:
    """Mean of each column without its ``cut`` smallest and ``cut`` largest values.

    Sorting (rather than partitioning) makes the sum order depend only on the values, so
    the result does not depend on the order the updates arrived in.
    """
    kept = np.sort(slab, axis=0)[cut : slab.shape[0] - cut]
    mean: np.ndarray = kept.mean(axis=0, dtype=np.float64)
    return mean.astype(np.float32)


class _TrimmedMeanAggregation(StackedAggregation):
    def __init__(self, context: AggregationContext, trim_fraction: float) -> None:
        super().__init__(context)
        self.trim_fraction = trim_fraction

    def combine(self, stack: DeltaStack) -> np.ndarray:
        k = stack.count
        cut = min(math.floor(self.trim_fraction * k), (k - 1) // 2)
        return stack.reduce_columns(lambda slab: trimmed_mean_of_columns(slab, cut))


class TrimmedMean(Aggregator):
    name = "trimmed_mean"
    holds_updates = True

    def __init__(self, trim_fraction: float = 0.1) -> None:
        if not 0 <= trim_fraction < 0.5:
            raise StrategyError(
                f"trim_fraction={trim_fraction}: it must be in [0, 0.5), the share of values "
                "dropped at each end of every coordinate"
            )
        self.trim_fraction = float(trim_fraction)

    def start(self, context: AggregationContext) -> StackedAggregation:
        return _TrimmedMeanAggregation(context, self.trim_fraction)
