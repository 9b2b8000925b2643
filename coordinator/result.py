"""What a finished (or stopped) coordinator reports: its federation's result, from the
ledger, so that the counts cover every run of the state dir, not only the last."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger


@dataclass
class FederationResult:
    federation: str
    mode: str
    rounds_completed: int
    model_version: int
    updates_incorporated: int
    updates_rejected: int
    rejected_by_reason: dict[str, int]
    duplicates: int
    final_metrics: dict[str, float]
    wall_seconds: float
    state_dir: str
    #: Differential privacy spent by the last version (None: DP off).
    epsilon: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def federation_result(
    ledger: UpdateLedger, config: CoordinatorConfig, started: float
) -> FederationResult:
    """Counts come from the ledger, so they cover every run of this state dir."""
    history = ledger.history()
    refused = ledger.rejection_counts()
    duplicates = refused.pop("duplicate", 0)
    last = history[-1] if history else None
    return FederationResult(
        federation=config.federation,
        mode=config.mode,
        rounds_completed=len(history),
        model_version=last.version if last else 0,
        updates_incorporated=ledger.count_updates(),
        updates_rejected=sum(refused.values()),
        rejected_by_reason=refused,
        duplicates=duplicates,
        final_metrics=last.metrics if last else {},
        wall_seconds=time.monotonic() - started,
        state_dir=str(config.state_dir),
        epsilon=last.epsilon if last else None,
        history=[h.__dict__ for h in history],
    )
