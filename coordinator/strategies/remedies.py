"""The maths of async mode's remedies for stragglers (``--async-remedy``), pure numpy.

FedBuff's async mode (Nguyen et al., AISTATS 2022) weighs an update tau versions behind by
s(tau) = (1 + tau)^-a and refuses it beyond ``--max-staleness``. With participants 5x
slower than the rest, their updates arrive further behind than the cutoff, so their data
never reaches the model; on label-skewed data its labels are then never learned. Two
remedies from the literature keep every update and bound the harm a stale one does:

- ``delay_adaptive`` (FADAS, Wang et al., ICML 2024, its delay-adaptive step): keep every
  update, weighted by s(tau), and shrink the server's step when the version's stalest
  update is far behind: eta_t = eta while tau_max <= tau_c, else min(eta, 1 / tau_max).
- ``cached`` (CA2FL, Wang et al., ICLR 2024): the coordinator keeps each participant's
  latest update h_i and makes the version's step
  v = h + sum_{i in S} n_i (delta_i - h_i) / sum_{i in S} n_i, h the mean of the cached
  updates: the participants who did not send this version (the slow ones) are still
  represented by their latest update, and a stale update only corrects its own entry. No
  s(tau) (the calibration replaces it). The paper weighs uniformly and averages h over all
  N participants, zero for one not heard yet; fedq weighs by examples, as its mean does,
  and averages over the participants heard so far (a zero would drag the first versions
  towards the initial model).

Both functions below are the whole of the maths; the cache's storage is
:mod:`fedq.coordinator.update_cache`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedq.coordinator.strategies.base import blocks


def delay_adaptive_lr(lr: float, tau_max: int, tau_c: int) -> float:
    """FADAS's server learning rate for a version whose stalest update is ``tau_max``
    versions behind: ``lr`` up to the threshold ``tau_c``, then min(lr, 1 / tau_max)."""
    assert tau_max >= 0 and tau_c >= 0, "staleness and its threshold are >= 0"
    if tau_max <= tau_c:
        return lr
    return min(lr, 1.0 / tau_max)


def calibration(
    cached_sum: np.ndarray,
    cached_weight: float,
    contributors: Sequence[tuple[float, np.ndarray | None]],
) -> np.ndarray:
    """CA2FL's correction, to add to the version's weighted mean of deltas
    sum_S n_i delta_i / sum_S n_i: h - sum_S n_i h_i / sum_S n_i, where
    h = ``cached_sum`` / ``cached_weight`` (sum of n_j h_j over the cached participants,
    and their weight; 0 when none is cached) and ``contributors`` the version's
    (n_i, h_i) with h_i None for a participant not cached yet (h_i = 0). Flat float32
    arrays of the model's size (h_i may be memory-mapped: read a block at a time); the
    result is a new one, and the only model-sized allocation."""
    total = float(sum(weight for weight, _ in contributors))
    assert total > 0, "a version has at least one update, each of weight > 0"
    if cached_weight > 0:
        out: np.ndarray = np.multiply(cached_sum, np.float32(1.0 / cached_weight), dtype=np.float32)
    else:
        out = np.zeros(cached_sum.shape, dtype=np.float32)
    for weight, cached in contributors:
        if cached is None:
            continue
        share = np.float32(weight / total)
        for start, block in blocks(cached):
            out[start : start + block.size] -= share * block
    return out
