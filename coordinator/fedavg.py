"""FedAvg's server step: theta_{v+1} = theta_v + lr * mean_k delta_k. Pure numpy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedq.messages.codec import Weights


def apply_mean_delta(
    weights: Mapping[str, np.ndarray], mean_delta: Mapping[str, np.ndarray], lr: float = 1.0
) -> Weights:
    """A new model; ``weights`` is left untouched (it is the committed version v)."""
    return {
        name: (w + np.float32(lr) * mean_delta[name]).astype(w.dtype, copy=False)
        for name, w in weights.items()
    }
