"""The weighted mean, streaming: O(model) memory however many updates a version takes.

sum_k w_k * s_k * delta_k / sum_k w_k, folded in float32 buffers shaped like the model,
piece by piece through a scratch of BLOCK_VALUES values: memory is the model once plus
4 MiB, and ``add`` keeps nothing of the update, so its body can go as soon as it returns.
"""

from __future__ import annotations

import numpy as np

from fedq.coordinator.strategies.base import (
    BLOCK_VALUES,
    Aggregation,
    AggregationContext,
    Aggregator,
    Delta,
    DeltaPieces,
    Weights,
    WholeDelta,
    blocks,
)


class StreamingMean(Aggregation):
    def __init__(self, context: AggregationContext) -> None:
        super().__init__()
        template = context.template
        self._sums = {name: np.zeros(t.shape, dtype=np.float32) for name, t in template.items()}
        self._scratch = np.empty(BLOCK_VALUES, dtype=np.float32)
        self.total_weight = 0.0
        self._finished = False

    def add(self, delta: Delta, weight: float, scale: float = 1.0) -> None:
        self.add_pieces(WholeDelta(delta), weight, scale)

    def add_pieces(self, pieces: DeltaPieces, weight: float, scale: float = 1.0) -> None:
        assert weight > 0 and 0 < scale <= 1, "weight > 0 and a staleness factor in (0, 1]"
        assert not self._finished, "the result was taken"
        factor = np.float32(weight * scale)
        for name, start, values in pieces:
            for offset, block in blocks(values):
                self._fold(name, start + offset, block, factor, weight)
        self.total_weight += weight
        self.count += 1

    def _fold(
        self, name: str, at: int, block: np.ndarray, factor: np.float32, weight: float
    ) -> None:
        """Add ``factor * block`` to the sums of tensor ``name`` from flat index ``at``."""
        total = self._sums[name].reshape(-1)[at : at + block.size]
        scratch = self._scratch[: block.size]
        np.multiply(block, factor, out=scratch, casting="unsafe")
        total += scratch

    def result(self) -> Weights:
        """The mean, made in place in the sums (no second model-sized buffer) and handed
        over: the caller may overwrite it. Adding after it is an error."""
        assert self.count > 0, "mean of no updates"
        if not self._finished:
            self._finished = True
            self._normalise()
        return self._sums

    def _normalise(self) -> None:
        inverse = np.float32(1.0 / self.total_weight)
        for total in self._sums.values():
            total *= inverse


class WeightedMean(Aggregator):
    """FedAvg's aggregation: the example-weighted mean of the deltas."""

    name = "mean"

    def start(self, context: AggregationContext) -> StreamingMean:
        return StreamingMean(context)
