"""A federation's strategy from its settings: aggregator, server optimizer, privacy.

The parts are pure and know nothing of settings; this is where flags become parts, and
where combinations that cannot work are refused before anything starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.strategies import (
    Aggregator,
    ServerOptimizer,
    StrategyError,
    build_aggregator,
    build_optimizer,
)
from fedq.coordinator.strategies.base import Weights

log = logging.getLogger("fedq.coordinator")

if TYPE_CHECKING:
    from fedq.coordinator.strategies.privacy import PrivacyAccountant


@dataclass
class Strategy:
    aggregator: Aggregator
    optimizer: ServerOptimizer
    #: Set when central differential privacy is on.
    accountant: PrivacyAccountant | None = None

    def log_held_memory(self, config: CoordinatorConfig, weights: Weights) -> None:
        """Say what an aggregator that keeps every delta of a version will hold."""
        if self.aggregator.holds_updates:
            held_bytes = config.k * sum(w.nbytes for w in weights.values())
            log.info(
                "aggregator %s keeps all %d deltas of a version: %.1f MB, in RAM up to "
                "--robust-memory-mb %.0f, beyond it in a file",
                config.aggregator,
                config.k,
                held_bytes / 1e6,
                config.robust_memory_mb,
            )

    def epsilon(self, versions: int) -> float | None:
        """Privacy spent after ``versions`` noised versions (None: DP is off)."""
        return None if self.accountant is None else self.accountant.epsilon(versions)


def compose_strategy(config: CoordinatorConfig, dp_seed: int) -> Strategy:
    """Raises StrategyError with one line saying what to change."""
    optimizer = build_optimizer(
        config.server_optimizer, {"lr": config.server_lr, **config.optimizer_options}
    )
    if config.dp_clip is None:
        aggregator = build_aggregator(config.aggregator, config.aggregator_options)
        aggregator.check(config.k)
        return Strategy(aggregator, optimizer)
    if config.aggregator != "mean" or config.aggregator_options:
        raise StrategyError(
            "--dp-clip replaces the aggregator with the clipped, noised mean (DP-FedAvg): "
            f"drop --aggregator {config.aggregator}"
        )
    from fedq.coordinator.strategies.privacy import (
        DifferentiallyPrivateMean,
        PrivacyAccountant,
    )

    return Strategy(
        DifferentiallyPrivateMean(
            clip_norm=config.dp_clip,
            noise_multiplier=config.dp_noise_multiplier,
            expected_updates=config.k,
            seed=dp_seed,
        ),
        optimizer,
        PrivacyAccountant(config.dp_noise_multiplier, config.dp_sampling_rate, config.dp_delta),
    )
