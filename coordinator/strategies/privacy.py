"""Central differential privacy for the aggregated delta (DP-FedAvg, McMahan et al. 2018).

:class:`DifferentiallyPrivateMean` clips each (staleness-scaled) delta to L2 norm clip_norm,
sums them with weight 1 (example counts would leak how much data a participant has) and
returns (sum + N(0, (noise_multiplier * clip_norm)^2) per coordinate) / expected_updates.
The denominator is fixed, so adding or removing one participant moves the mean by at most
clip_norm / expected_updates whoever else took part: the sensitivity the noise is
calibrated to. :class:`PrivacyAccountant` turns noise_multiplier, the sampling rate and a
number of versions into the (epsilon, delta) the releases cost, with RDP accounting.

What must stay true:
- The noise of version v comes from ``default_rng([seed, v])``: redoing a version after a
  coordinator crash gives the very same noise, hence the same model, while the secret seed
  keeps it unpredictable to participants. The seed must not be logged or shared.
- noise_multiplier = 0 is clipping only and gives no privacy (epsilon is infinite).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import numpy as np

from fedq.coordinator.strategies.base import (
    Aggregation,
    AggregationContext,
    Aggregator,
    DeltaPieces,
    StrategyError,
    Weights,
)
from fedq.coordinator.strategies.clipped_mean import ClippedStreamingMean, check_clip_norm


class _PrivateSum(ClippedStreamingMean):
    """The clipped deltas summed with weight 1 (the clipped mean's fold), then noised.
    Every weight is 1, so no cap is needed (and the noised sum reads every update)."""

    caps_weight = False

    def __init__(self, context: AggregationContext, rule: DifferentiallyPrivateMean) -> None:
        super().__init__(context, rule.clip_norm)
        self._rule = rule
        self._version = context.version

    def add_pieces(self, pieces: DeltaPieces, weight: float, scale: float = 1.0) -> None:
        assert weight > 0, "a positive example count (not used: it would leak)"
        super().add_pieces(pieces, 1.0, scale)

    def result(self) -> Weights:
        assert self.count > 0, "mean of no updates"
        rule = self._rule
        rng = np.random.default_rng([rule.seed, self._version])
        std = rule.noise_multiplier * rule.clip_norm
        result: Weights = {}
        for name, total in self._sums.items():
            noisy = total + rng.normal(0.0, std, total.shape) if std > 0 else total
            result[name] = (noisy / rule.expected_updates).astype(np.float32)
        return result


class DifferentiallyPrivateMean(Aggregator):
    #: Made by ``--dp-clip``, not chosen by name: it needs the federation's K and seed.
    by_name = False

    name = "dp_mean"

    def __init__(
        self, clip_norm: float, noise_multiplier: float, expected_updates: int, seed: int
    ) -> None:
        self.clip_norm = check_clip_norm(clip_norm)
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise StrategyError(
                f"noise_multiplier={noise_multiplier}: it must be >= 0 (noise std / clip_norm)"
            )
        if expected_updates < 1:
            raise StrategyError(
                f"expected_updates={expected_updates}: the fixed denominator must be >= 1, "
                "the number of updates a version is expected to take"
            )
        if seed < 0:
            raise StrategyError("seed must be a non-negative integer (keep it secret)")
        self.noise_multiplier = float(noise_multiplier)
        self.expected_updates = int(expected_updates)
        self.seed = int(seed)

    def __repr__(self) -> str:  # never show the seed
        return (
            f"DifferentiallyPrivateMean(clip_norm={self.clip_norm}, "
            f"noise_multiplier={self.noise_multiplier}, expected_updates={self.expected_updates})"
        )

    def start(self, context: AggregationContext) -> Aggregation:
        return _PrivateSum(context, self)


@contextlib.contextmanager
def _absl_warnings_silenced() -> Iterator[None]:
    """dp_accounting logs (through absl) a warning for every RDP order whose series does not
    converge; that order is just left out of the minimum. Errors still get through."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


class PrivacyAccountant:
    """epsilon after a number of noisy releases, each from a Poisson sample of rate q."""

    def __init__(self, noise_multiplier: float, sampling_rate: float, delta: float) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise StrategyError(f"noise_multiplier={noise_multiplier}: it must be >= 0")
        if not 0 < sampling_rate <= 1:
            raise StrategyError(
                f"sampling_rate={sampling_rate}: it must be in (0, 1], the share of "
                "participants (or examples) that take part in a version"
            )
        if not 0 < delta < 1:
            raise StrategyError(f"delta={delta}: it must be in (0, 1), typically < 1/population")
        self.noise_multiplier = float(noise_multiplier)
        self.sampling_rate = float(sampling_rate)
        self.delta = float(delta)

    def epsilon(self, steps: int) -> float:
        """epsilon at this delta after ``steps`` releases: 0 for none, inf without noise."""
        if steps < 0:
            raise ValueError(f"steps={steps}: it must be >= 0")
        if steps == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        import dp_accounting  # 1.2 s to import: only when privacy is on

        event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.sampling_rate < 1:
            event = dp_accounting.PoissonSampledDpEvent(self.sampling_rate, event)
        accountant = dp_accounting.rdp.RdpAccountant()
        with _absl_warnings_silenced():
            accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
            return float(accountant.get_epsilon(self.delta))
