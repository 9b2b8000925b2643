"""The SQLite ledger: which updates made which committed model version, and what was refused.

Invariant (exactly-once): ``updates.update_id`` is the primary key, and a version's updates
are inserted in the same transaction as the version itself, so an update id belongs to at
most one committed version, and a version is committed with all of its updates or none.
Calls block; the coordinator runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    closed_by TEXT NOT NULL,
    n_updates INTEGER NOT NULL,
    total_weight REAL NOT NULL,
    opened_at REAL NOT NULL,
    committed_at REAL NOT NULL,
    checkpoint TEXT NOT NULL,
    metrics TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS updates (
    update_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL REFERENCES versions(version),
    participant TEXT NOT NULL,
    round INTEGER NOT NULL,
    base_version INTEGER NOT NULL,
    num_examples INTEGER NOT NULL,
    weight REAL NOT NULL,
    staleness INTEGER NOT NULL,
    metrics TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    update_id TEXT,
    participant TEXT,
    round INTEGER,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class UpdateRecord:
    update_id: str
    participant: str
    round: int
    base_version: int
    num_examples: int
    weight: float
    staleness: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionRecord:
    version: int
    round: int
    closed_by: str
    total_weight: float
    opened_at: float
    committed_at: float
    checkpoint: str
    metrics: dict[str, float] = field(default_factory=dict)
    n_updates: int = 0


@dataclass(frozen=True)
class RoundHistory:
    """One row of ``fedq history``."""

    version: int
    round: int
    closed_by: str
    n_updates: int
    participants: list[str]
    rejected: dict[str, int]
    seconds: float
    metrics: dict[str, float]


class UpdateLedger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, *args: Any) -> Any:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def get_meta(self, key: str) -> str | None:
        value = self._one("SELECT value FROM meta WHERE key = ?", key)
        return None if value is None else str(value)

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def commit_version(self, version: VersionRecord, updates: list[UpdateRecord]) -> None:
        """Atomically record ``version`` and the updates it incorporated."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        version.version,
                        version.round,
                        version.closed_by,
                        len(updates),
                        version.total_weight,
                        version.opened_at,
                        version.committed_at,
                        version.checkpoint,
                        json.dumps(version.metrics),
                    ),
                )
                self._db.executemany(
                    "INSERT INTO updates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            u.update_id,
                            version.version,
                            u.participant,
                            u.round,
                            u.base_version,
                            u.num_examples,
                            u.weight,
                            u.staleness,
                            json.dumps(u.metrics),
                        )
                        for u in updates
                    ],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def record_rejection(
        self,
        update_id: str | None,
        participant: str | None,
        round_: int | None,
        reason: str,
        detail: str,
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO rejections (update_id, participant, round, reason, detail, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (update_id, participant, round_, reason, detail, time.time()),
            )

    def has_update(self, update_id: str) -> bool:
        return self._one("SELECT 1 FROM updates WHERE update_id = ?", update_id) is not None

    def last_version(self) -> VersionRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT version, round, closed_by, total_weight, opened_at, committed_at, "
                "checkpoint, metrics, n_updates FROM versions ORDER BY version DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        version, round_, closed_by, total, opened, committed, checkpoint, metrics, n = row
        return VersionRecord(
            version, round_, closed_by, total, opened, committed, checkpoint, json.loads(metrics), n
        )

    def count_updates(self) -> int:
        return int(self._one("SELECT COUNT(*) FROM updates"))

    def rejection_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT reason, COUNT(*) FROM rejections GROUP BY reason ORDER BY reason"
            ).fetchall()
        return {reason: int(n) for reason, n in rows}

    def history(self) -> list[RoundHistory]:
        """Every committed version with its contributors and the rejections of its round."""
        with self._lock:
            versions = self._db.execute(
                "SELECT version, round, closed_by, n_updates, opened_at, committed_at, metrics "
                "FROM versions ORDER BY version"
            ).fetchall()
            contributors = self._db.execute(
                "SELECT version, participant FROM updates ORDER BY version, participant"
            ).fetchall()
            rejected = self._db.execute(
                "SELECT round, reason, COUNT(*) FROM rejections GROUP BY round, reason"
            ).fetchall()
        by_version: dict[int, list[str]] = {}
        for version, participant in contributors:
            by_version.setdefault(version, []).append(participant)
        by_round: dict[int | None, dict[str, int]] = {}
        for round_, reason, n in rejected:
            by_round.setdefault(round_, {})[reason] = int(n)
        return [
            RoundHistory(
                version=v,
                round=r,
                closed_by=closed_by,
                n_updates=n,
                participants=by_version.get(v, []),
                rejected=by_round.get(r, {}),
                seconds=committed - opened,
                metrics=json.loads(metrics),
            )
            for v, r, closed_by, n, opened, committed, metrics in versions
        ]

    def rejections(self) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._db.execute(
                "SELECT update_id, participant, round, reason, detail, at FROM rejections "
                "ORDER BY id"
            )
            cols = [c[0] for c in cursor.description]
            return [dict(zip(cols, row, strict=True)) for row in cursor.fetchall()]

    def update_ids_by_version(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT update_id, version FROM updates").fetchall()
        return {uid: int(v) for uid, v in rows}


__all__ = ["RoundHistory", "UpdateLedger", "UpdateRecord", "VersionRecord", "asdict"]
