"""The weighted mean of norm-clipped deltas: bounds how far one update can pull the model.

Each (staleness-scaled) delta is shrunk to L2 norm <= clip_norm, the norm taken over every
value of every tensor, then folded exactly like :class:`~.mean.WeightedMean`. The result is
a weighted average of vectors no longer than clip_norm, so it is no longer either.
Streaming: O(model) memory, nothing of an update survives ``add``.
"""

from __future__ import annotations

import math

import numpy as np

from fedq.coordinator.strategies.base import AggregationContext, Aggregator, Delta, StrategyError
from fedq.coordinator.strategies.mean import StreamingMean

#: Values converted to float64 at once by :func:`l2_norm` (8 MiB of scratch).
_CHUNK = 1 << 20


def l2_norm(delta: Delta) -> float:
    """The L2 norm over every value of every tensor, accumulated in float64."""
    total = 0.0
    for tensor in delta.values():
        flat = tensor.reshape(-1)
        for start in range(0, flat.size, _CHUNK):
            part = flat[start : start + _CHUNK].astype(np.float64)
            total += float(np.dot(part, part))
    return math.sqrt(total)


def clip_factor(delta: Delta, scale: float, clip_norm: float) -> float:
    """The factor in (0, 1] that brings ``scale * delta`` to L2 norm <= clip_norm."""
    norm = scale * l2_norm(delta)
    return clip_norm / norm if norm > clip_norm else 1.0


def check_clip_norm(clip_norm: float) -> float:
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise StrategyError(f"clip_norm={clip_norm}: it must be a finite L2 norm > 0")
    return float(clip_norm)


class ClippedStreamingMean(StreamingMean):
    def __init__(self, context: AggregationContext, clip_norm: float) -> None:
        super().__init__(context)
        self.clip_norm = clip_norm

    def add(self, delta: Delta, weight: float, scale: float = 1.0) -> None:
        super().add(delta, weight, scale * clip_factor(delta, scale, self.clip_norm))


class NormClippedMean(Aggregator):
    name = "clipped_mean"

    def __init__(self, clip_norm: float) -> None:
        self.clip_norm = check_clip_norm(clip_norm)

    def start(self, context: AggregationContext) -> ClippedStreamingMean:
        return ClippedStreamingMean(context, self.clip_norm)
