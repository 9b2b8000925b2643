"""Whether an update, applied alone, keeps the model within float32.

The fold refuses an update whose weighted values would make the aggregate infinite, but
an aggregate can be finite and the model it moves still overflow: a participant that
sends values near 3.4e38 once, weighted down by the cap, leaves the model near the limit,
and its next finite update takes it past. Every honest update after that would be refused
as non-finite, forever.

For the weighted mean and a plain server step (theta + the mean of the deltas) the new
model is a convex combination of ``theta + delta_k``: if each of those is finite, so is
the model (up to the last rounding at the very edge, which the check before the commit
still catches). So each update is checked on its own, at the fold, and one that would
take the model past float32 is refused as ``overflow``, identified, with the version made
of the others.

The check usually costs nothing: the update's L2 norm (known from the intake) bounds its
largest magnitude, so when that plus the model's is within float32 the update fits. Else
one min/max pass over the update (about what ``np.isfinite`` costs) tries the same with
its true largest magnitude, and only when that fails too is ``theta + delta`` computed,
piece by piece. For a chunked update each pass is a read of its spool.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fedq.coordinator.strategies.base import DeltaPieces, Weights

#: The largest finite float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def peak(values: Iterable[np.ndarray]) -> float:
    """The largest magnitude among ``values``: infinity if any is NaN or infinite (min and
    max carry a NaN), 0 for none."""
    top = 0.0
    for array in values:
        if array.size:
            low, high = float(array.min()), float(array.max())
            if not (math.isfinite(low) and math.isfinite(high)):
                return math.inf
            top = max(top, -low, high)
    return top


@dataclass(frozen=True)
class Headroom:
    """The model a version starts from, and its largest magnitude."""

    model: Weights
    model_peak: float

    @classmethod
    def of(cls, model: Weights) -> Headroom:
        return cls(model, peak(t.reshape(-1) for t in model.values()))

    def fits(self, pieces: DeltaPieces) -> bool:
        """Whether ``model + delta`` is finite everywhere."""
        # The norm, in float64, may round below the largest magnitude by a few units of
        # its last place: the margin covers that.
        if pieces.norm() * (1 + 1e-9) + self.model_peak <= FLOAT32_MAX:
            return True
        if peak(values for _, _, values in pieces) + self.model_peak <= FLOAT32_MAX:
            return True
        with np.errstate(over="ignore", invalid="ignore"):
            for name, start, values in pieces:
                base = self.model[name].reshape(-1)[start : start + values.size]
                if not np.isfinite(base + values).all():
                    return False
        return True
