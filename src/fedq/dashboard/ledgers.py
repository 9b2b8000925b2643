"""What the dashboard reads from each federation's ledger: read-only, never a write.

A state dir holds one folder per federation, each with its ``ledger.sqlite`` (see
``fedq history``); a folder that is itself a federation's state works too. The connection
is opened with ``mode=ro``, so the dashboard cannot change what the coordinator recorded,
and the dead-letter queue is browsed here, from the rejections table, without consuming a
single message. Calls block: the board runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedq.coordinator.ledger import SCHEMA_VERSION

LEDGER = "ledger.sqlite"
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


@dataclass(frozen=True)
class ParticipantRecord:
    """A participant's account in the ledger."""

    participant: str
    accepted: int = 0
    rejected: int = 0
    #: Of its accepted updates: the largest and the latest staleness (versions behind).
    max_staleness: int = 0
    last_staleness: int = 0


@dataclass(frozen=True)
class FederationLedger:
    federation: str
    state_dir: str
    versions: list[VersionPoint] = field(default_factory=list)
    participants: list[ParticipantRecord] = field(default_factory=list)
    #: Rejections by reason, and the newest RECENT_REJECTIONS of them, newest first.
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    recent_rejections: list[dict[str, Any]] = field(default_factory=list)
    #: Why the ledger could not be read (None: it was).
    error: str | None = None


def find_ledgers(state_dir: Path) -> dict[str, Path]:
    """Federation folder name -> its ledger, under ``state_dir`` (one level deep)."""
    if (state_dir / LEDGER).is_file():
        return {state_dir.name: state_dir / LEDGER}
    if not state_dir.is_dir():
        return {}
    return {p.parent.name: p for p in sorted(state_dir.glob(f"*/{LEDGER}"))}


@contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection that cannot write: SQLite refuses every change through it."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=2.0)) as db:
        yield db


def read_federation(name: str, path: Path) -> FederationLedger:
    """Everything the dashboard shows from one ledger; a ledger being created or of
    another schema gives what could be read and an ``error`` saying why not the rest."""
    try:
        with read_only(path) as db:
            db.execute("BEGIN")  # one snapshot for every read below, whatever commits meanwhile
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if not {"meta", "versions", "updates", "rejections"} <= tables:
                return FederationLedger(name, str(path.parent), error="ledger not created yet")
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("schema") != SCHEMA_VERSION:
                return FederationLedger(
                    name,
                    str(path.parent),
                    error=f"written by another fedq (ledger schema {meta.get('schema', 1)}, "
                    f"this one reads {SCHEMA_VERSION}): its history is not shown",
                )
            return FederationLedger(
                federation=meta.get("federation", name),
                state_dir=str(path.parent),
                versions=_versions(db),
                participants=_participants(db),
                rejected_by_reason=dict(
                    db.execute("SELECT reason, COUNT(*) FROM rejections GROUP BY reason")
                ),
                recent_rejections=rejections(db, limit=RECENT_REJECTIONS),
            )
    except sqlite3.Error as exc:
        return FederationLedger(name, str(path.parent), error=f"cannot read {path}: {exc}")


def _versions(db: sqlite3.Connection) -> list[VersionPoint]:
    rows = db.execute(
        "SELECT version, round, committed_at, committed_at - opened_at, closed_by, n_updates, "
        "metrics, epsilon FROM versions ORDER BY version"
    )
    return [
        VersionPoint(v, r, at, seconds, closed_by, n, json.loads(metrics), eps)
        for v, r, at, seconds, closed_by, n, metrics, eps in rows
    ]


def _participants(db: sqlite3.Connection) -> list[ParticipantRecord]:
    accepted = {
        p: (n, worst, last)
        for p, n, worst, last in db.execute(
            "SELECT participant, COUNT(*), MAX(staleness), "
            "(SELECT u2.staleness FROM updates u2 WHERE u2.participant = u.participant "
            " ORDER BY u2.version DESC LIMIT 1) "
            "FROM updates u GROUP BY participant"
        )
    }
    rejected = dict(
        db.execute(
            "SELECT participant, COUNT(*) FROM rejections WHERE participant IS NOT NULL "
            "GROUP BY participant"
        )
    )
    records = []
    for participant in sorted(accepted.keys() | rejected.keys()):
        n, worst, last = accepted.get(participant, (0, 0, 0))
        records.append(ParticipantRecord(participant, n, rejected.get(participant, 0), worst, last))
    return records


def rejections(
    db: sqlite3.Connection, *, limit: int, before_id: int | None = None, reason: str | None = None
) -> list[dict[str, Any]]:
    """Rejections newest first: at most ``limit``, older than ``before_id`` if given."""
    where: list[str] = ["1"]
    args: list[int | str] = []
    if before_id is not None:
        where.append("id < ?")
        args.append(before_id)
    if reason:
        where.append("reason = ?")
        args.append(reason)
    cursor = db.execute(
        "SELECT id, at, participant, update_id, base_version, during_version, reason, detail "
        f"FROM rejections WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
        (*args, limit),
    )
    cols = [c[0] for c in cursor.description]
    return [dict(zip(cols, row, strict=True)) for row in cursor.fetchall()]


def page_of_rejections(
    path: Path, *, limit: int, before_id: int | None, reason: str | None
) -> list[dict[str, Any]]:
    """One page of the DLQ as the ledger recorded it (the page's "older" button)."""
    with read_only(path) as db:
        return rejections(db, limit=limit, before_id=before_id, reason=reason)
