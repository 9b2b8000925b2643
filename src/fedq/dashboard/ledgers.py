"""What the dashboard shows of each federation's ledger, read through the ledger's one read
model (:class:`~fedq.coordinator.ledger_view.LedgerView`): read-only, never a write.

A state dir holds one folder per federation, each with its ``ledger.sqlite`` (see
``fedq history``); a folder that is itself a federation's state works too. The dead-letter
queue is browsed here, from the ledger's refusals, without consuming a single message.
The shapes below are the JSON the page reads (``/api/state``): a field renamed here is a
page broken. Calls block: the board runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedq.coordinator.ledger import FINISHED_AT
from fedq.coordinator.ledger_schema import SCHEMA_VERSION, LedgerNotCreated, SchemaMismatch
from fedq.coordinator.ledger_view import LedgerView, ParticipantAccount
from fedq.coordinator.records import VersionRecord

#: Newest rejections carried in every snapshot; older ones are paged with ``rejections``.
RECENT_REJECTIONS = 50


@dataclass(frozen=True)
class VersionPoint:
    """A committed version: one point of the learning curves."""

    version: int
    round: int | None
    committed_at: float
    seconds: float
    closed_by: str
    n_updates: int
    metrics: dict[str, float]
    #: Differential privacy spent up to and including this version (None: DP off).
    epsilon: float | None

    @classmethod
    def of(cls, v: VersionRecord) -> VersionPoint:
        return cls(
            v.version,
            v.round,
            v.committed_at,
            v.committed_at - v.opened_at,
            v.closed_by,
            v.n_updates,
            v.metrics,
            v.epsilon,
        )


@dataclass(frozen=True)
class FederationLedger:
    federation: str
    state_dir: str
    versions: list[VersionPoint] = field(default_factory=list)
    participants: list[ParticipantAccount] = field(default_factory=list)
    #: Rejections by reason, and the newest RECENT_REJECTIONS of them, newest first.
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    recent_rejections: list[dict[str, Any]] = field(default_factory=list)
    #: When its coordinator announced the federation done (None: not yet, or never).
    finished_at: float | None = None
    #: Why the ledger could not be read (None: it was).
    error: str | None = None


def read_federation(name: str, path: Path) -> FederationLedger:
    """Everything the dashboard shows from one ledger, in one snapshot; a ledger being
    created or of another schema gives an ``error`` saying why it is not shown."""
    state_dir = str(path.parent)
    try:
        with LedgerView.open(path) as view, view.snapshot():
            return FederationLedger(
                federation=view.federation,
                state_dir=state_dir,
                versions=[VersionPoint.of(v) for v in view.versions()],
                participants=view.participants(),
                rejected_by_reason=view.rejection_counts(),
                recent_rejections=view.dead_letters(limit=RECENT_REJECTIONS),
                finished_at=_float(view.get_meta(FINISHED_AT)),
            )
    except LedgerNotCreated:
        return FederationLedger(name, state_dir, error="ledger not created yet")
    except SchemaMismatch as exc:
        return FederationLedger(
            name,
            state_dir,
            error=f"written by another fedq (ledger schema {exc.found or 1}, "
            f"this one reads {SCHEMA_VERSION}): its history is not shown",
        )
    except sqlite3.Error as exc:
        return FederationLedger(name, state_dir, error=f"cannot read {path}: {exc}")


def page_of_rejections(
    path: Path, *, limit: int, before_id: int | None, reason: str | None
) -> list[dict[str, Any]]:
    """One page of the DLQ as the ledger recorded it (the page's "older" button)."""
    with LedgerView.open(path) as view:
        return view.dead_letters(limit=limit, before_id=before_id, reason=reason)


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None
