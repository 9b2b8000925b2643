"""The weighted mean of norm-clipped deltas: bounds how far one update can pull the model.

Each (staleness-scaled) delta is shrunk to L2 norm <= clip_norm, the norm taken over every
value of every tensor, then folded exactly like :class:`~.early_mean.WeightedMean` (the heaviest
capped at ``max_weight_share`` of the version, a fold that would overflow refused). The
result is a weighted average of vectors no longer than clip_norm, so it is no longer
either; the cap bounds how much of that average one claimed weight can take.
Streaming: O(model) memory, nothing of an update survives ``add``.
"""

from __future__ import annotations

import math

from fedq.coordinator.strategies.base import (
    AggregationContext,
    Aggregator,
    Delta,
    DeltaPieces,
    StrategyError,
    WholeDelta,
    l2_norm,
)
from fedq.coordinator.strategies.mean import StreamingMean

__all__ = ["ClippedStreamingMean", "NormClippedMean", "clip_factor", "l2_norm"]


def clip_factor(delta: Delta | DeltaPieces, scale: float, clip_norm: float) -> float:
    """The factor in (0, 1] that brings ``scale * delta`` to L2 norm <= clip_norm."""
    pieces = delta if isinstance(delta, DeltaPieces) else WholeDelta(delta)
    norm = scale * pieces.norm()
    return clip_norm / norm if norm > clip_norm else 1.0


def check_clip_norm(clip_norm: float) -> float:
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise StrategyError(f"clip_norm={clip_norm}: it must be a finite L2 norm > 0")
    return float(clip_norm)


class ClippedStreamingMean(StreamingMean):
    def __init__(self, context: AggregationContext, clip_norm: float) -> None:
        super().__init__(context)
        self.clip_norm = clip_norm

    def add_pieces(self, pieces: DeltaPieces, weight: float, scale: float = 1.0) -> None:
        super().add_pieces(pieces, weight, scale * clip_factor(pieces, scale, self.clip_norm))


class NormClippedMean(Aggregator):
    name = "clipped_mean"

    def __init__(self, clip_norm: float) -> None:
        self.clip_norm = check_clip_norm(clip_norm)

    def start(self, context: AggregationContext) -> ClippedStreamingMean:
        return ClippedStreamingMean(context, self.clip_norm)
