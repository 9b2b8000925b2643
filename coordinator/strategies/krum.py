"""Krum and multi-Krum (Blanchard et al. 2017): keep the updates closest to their peers.

With k updates of which at most f are Byzantine, each update is scored by the sum of the
squared L2 distances to its k - f - 2 nearest other updates; Krum returns the update with
the lowest score, multi-Krum (``select`` = m > 1) the example-weighted mean of the m best
(normalised by example counts only, like the weighted mean), the heaviest of the m capped
at ``max_weight_share`` of their weight (:func:`~.base.capped_weights`): the distances
choose, but a claimed weight must not make one of the chosen the whole step.

What must stay true:
- :meth:`Krum.check` refuses a capacity k <= 2f + 2, where the guarantee does not hold.
- A version closed early (a deadline) may have fewer updates than the capacity: the score
  then uses max(1, k - f - 2) neighbours (at most k - 1), the best that is possible, and a
  single update is returned as it is.
- Distances come from the blockwise float64 Gram matrix, |a - b|^2 = a.a + b.b - 2 a.b, so
  a spilled stack is never loaded whole. Equal scores are broken by arrival order.
"""

from __future__ import annotations

import numpy as np

from fedq.coordinator.strategies.base import (
    AggregationContext,
    Aggregator,
    StrategyError,
    capped_weights,
)
from fedq.coordinator.strategies.stack import DeltaStack, StackedAggregation


def squared_distances(gram: np.ndarray) -> np.ndarray:
    """Pairwise squared distances from a Gram matrix (rounding below zero is clipped)."""
    norms = np.diag(gram)
    return np.maximum(norms[:, None] + norms[None, :] - 2.0 * gram, 0.0)


def krum_scores(distances: np.ndarray, neighbours: int) -> np.ndarray:
    """Each row's sum of its ``neighbours`` smallest distances to the other rows."""
    others = distances.copy()
    np.fill_diagonal(others, np.inf)
    scores: np.ndarray = np.sort(others, axis=1)[:, :neighbours].sum(axis=1)
    return scores


class _KrumAggregation(StackedAggregation):
    def __init__(self, context: AggregationContext, byzantine: int, select: int) -> None:
        super().__init__(context)
        self.byzantine = byzantine
        self.select = select

    def combine(self, stack: DeltaStack) -> np.ndarray:
        k = stack.count
        if k == 1:
            return stack.weighted_rows_mean([0], [1.0])
        neighbours = min(max(1, k - self.byzantine - 2), k - 1)
        scores = krum_scores(squared_distances(stack.gram()), neighbours)
        best = np.argsort(scores, kind="stable")[: min(self.select, k)]
        if best.size == 1:
            return stack.weighted_rows_mean([int(best[0])], [1.0])
        weights = capped_weights(stack.weights[best].tolist(), self.max_weight_share)
        return stack.weighted_rows_mean(best.tolist(), weights)


class Krum(Aggregator):
    name = "krum"
    holds_updates = True

    def __init__(self, byzantine: int = 1, select: int = 1) -> None:
        if byzantine < 0:
            raise StrategyError(f"byzantine={byzantine}: the number of bad updates is >= 0")
        if select < 1:
            raise StrategyError(f"select={select}: Krum keeps at least one update (1 = Krum)")
        self.byzantine = int(byzantine)
        self.select = int(select)

    def check(self, capacity: int) -> None:
        needed = 2 * self.byzantine + 3
        if capacity < needed:
            raise StrategyError(
                f"krum with byzantine={self.byzantine} needs more than 2*byzantine+2 updates "
                f"per version, got {capacity}: raise the quorum/buffer size to at least "
                f"{needed} or lower byzantine"
            )
        if self.select > capacity:
            raise StrategyError(
                f"krum select={self.select} exceeds the {capacity} updates of a version: "
                "lower select or raise the quorum/buffer size"
            )

    def start(self, context: AggregationContext) -> StackedAggregation:
        return _KrumAggregation(context, self.byzantine, self.select)
