"""The maths of async mode's remedies for stragglers (``--async-remedy``), pure numpy.

FedBuff's async mode (Nguyen et al., AISTATS 2022) weighs an update tau versions behind by
s(tau) = (1 + tau)^-a and refuses it beyond ``--max-staleness``. With participants 5x
slower than the rest, their updates arrive further behind than the cutoff, so their data
never reaches the model; on label-skewed data its labels are then never learned. Three
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

  fedq also takes every update, cached or new, as seen from the current model x: an update
  delta_i computed on model x_b is the local model m_i = x_b + delta_i it produced, and
  counts as m_i - x. The paper adds each cached delta_i again in every version until its
  participant sends another, as if it had been computed on x. When local training goes
  far (epochs of it, as federated learning does), delta_i is mostly the way from x_b to
  the participant's own optimum, and x has since moved that way too: each version then
  adds again the steps the model already took, and the federation diverges. Measured:
  Fashion-MNIST, Dir(0.5), 3 of 10 participants 5x slower, ``bench/async_vs_sync.py``:
  78.5% at about 100 s, then 10% (chance) from about 120 s on; and on a quadratic model
  with local training that goes 95% of the way (``tests/test_async_remedies.py``) the
  paper's step diverges where this one converges to FedAvg's fixed point. The paper's
  analysis assumes small local steps (delta_i near a gradient), where the two agree.

- ``cached_mean`` (MIFA, Gu et al., NeurIPS 2021, rebased as ``cached`` is): the same
  cache, and each version's model is the example-weighted mean of every participant's
  latest local model, the version's updates replacing their participants' entries:
  x' = sum_j n_j m_j / sum_j n_j. CA2FL's step is that mean plus
  sum_S (s_i - n_i / sum_j n_j) (m_i - m_i_old): the version's own updates counted again,
  so the model leans each version toward the participants who sent it, most often the
  fast ones. Where a label has one or two holders (NIID-Bench's #C=2), the model then
  swings from version to version with who sent it; the mean does not lean, and with
  every update fresh (sync mode's case) it is FedAvg's step exactly. Measured in
  ``bench/async_vs_sync.py``: steadier than ``cached`` on #C=2, slower to a first target
  on Dir(0.5) (bench/README, "Stragglers").

The functions below are the whole of the maths; the cache's storage is
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


#: A flat float32 vector given as pieces: (offset, values), together the whole of it
#: (a model's tensors, mapped from a checkpoint, are not one array).
Flat = Sequence[tuple[int, np.ndarray]]


def calibration(
    cached_sum: np.ndarray,
    cached_weight: float,
    contributors: Sequence[tuple[float, Flat | None, Flat]],
    model: Flat,
) -> np.ndarray:
    """CA2FL's correction, rebased on the current model, to add to the version's weighted
    mean of deltas A = sum_S n_i delta_i / sum_S n_i.

    Each update counts as the local model it produced, m = x_b + delta on its base model
    x_b, taken from the current model x: h_j = m_j - x. The step is
    v = h + sum_S n_i ((x_b_i + delta_i - x) - h_i) / sum_S n_i, with
    h = ``cached_sum`` / ``cached_weight`` - x (``cached_sum``: sum of n_j m_j over the
    cached participants; h = 0 when none is), h_i = m_i - x for a contributor cached, 0
    for one not cached yet. ``contributors``: each one's (n_i, its cached m_i or None,
    x_b_i). So v - A, returned, is
    h - sum_{S cached} s_i m_i + sum_S s_i x_b_i - (1 - sum_{S cached} s_i) x, with
    s_i = n_i / sum_S n_i (the first term also has -x when something is cached).

    Flat float32 of the model's size; everything but ``cached_sum`` is read a block at a
    time (it may be memory-mapped), and the result, a new array, is the only model-sized
    allocation."""
    total = float(sum(weight for weight, _, _ in contributors))
    assert total > 0, "a version has at least one update, each of weight > 0"
    if cached_weight > 0:
        out: np.ndarray = np.multiply(cached_sum, np.float32(1.0 / cached_weight), dtype=np.float32)
    else:
        out = np.zeros(cached_sum.shape, dtype=np.float32)
    cached_share = 0.0
    for weight, cached, base in contributors:
        share = weight / total
        _add(out, base, share)
        if cached is not None:
            _add(out, cached, -share)
            cached_share += share
    _add(out, model, -(1.0 - cached_share + (1.0 if cached_weight > 0 else 0.0)))
    return out


def _add(out: np.ndarray, values: Flat, factor: float) -> None:
    """out += factor x values, a block at a time (no model-sized scratch)."""
    scale = np.float32(factor)
    for offset, piece in values:
        for start, block in blocks(piece.reshape(-1)):
            at = offset + start
            out[at : at + block.size] += scale * block


def cached_mean_step(
    cached_sum: np.ndarray,
    cached_weight: float,
    replaced: Sequence[tuple[float, Flat]],
    added: Sequence[tuple[float, Flat]],
    model: Flat,
) -> np.ndarray:
    """``cached_mean``'s delta on the current model x: the example-weighted mean of the
    cached local models once the version's are in, minus x.

    ``cached_sum`` / ``cached_weight``: sum_j n_j m_j and sum_j n_j over the committed
    cache; ``replaced``: the (n, m) entries the version's updates supersede; ``added``: the
    version's (n, m), one per participant (its latest). Flat float32 of the model's size;
    every argument but ``cached_sum`` is read a block at a time (it may be memory-mapped),
    and the result, a new array, is the only model-sized allocation."""
    weight = cached_weight - sum(w for w, _ in replaced) + sum(w for w, _ in added)
    assert added and weight > 0, "a version has at least one update, each of weight > 0"
    out: np.ndarray = np.array(cached_sum, dtype=np.float32)
    for factor, entries in ((-1.0, replaced), (1.0, added)):
        for w, local in entries:
            _add(out, local, factor * w)
    out *= np.float32(1.0 / weight)
    _add(out, model, -1.0)
    return out
