"""The SQLite ledger: which updates made which committed model version, and what was refused.

Invariant (exactly-once): ``updates.update_id`` is the primary key, and a version's updates
are inserted in the same transaction as the version itself, so an update id belongs to at
most one committed version, and a version is committed with all of its updates or none.
Each update's body digest is kept, so a later copy of a committed id is told apart: the
same bytes are a duplicate, other bytes a conflicting duplicate.
Calls block; the coordinator runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from fedq.coordinator.records import RoundHistory, UpdateRecord, VersionRecord

#: Bumped when a table changes; a ledger of another schema is refused with what to do.
SCHEMA_VERSION = "3"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Before any other table, so a ledger is never left without its schema; kept if present.
INSERT OR IGNORE INTO meta VALUES ('schema', '{SCHEMA_VERSION}');
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY,
    round INTEGER,
    closed_by TEXT NOT NULL,
    n_updates INTEGER NOT NULL,
    total_weight REAL NOT NULL,
    opened_at REAL NOT NULL,
    committed_at REAL NOT NULL,
    checkpoint TEXT NOT NULL,
    metrics TEXT NOT NULL,
    epsilon REAL
);
CREATE TABLE IF NOT EXISTS updates (
    update_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL REFERENCES versions(version),
    participant TEXT NOT NULL,
    round INTEGER,
    base_version INTEGER NOT NULL,
    num_examples INTEGER NOT NULL,
    weight REAL NOT NULL,
    staleness INTEGER NOT NULL,
    digest TEXT NOT NULL,
    metrics TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    update_id TEXT,
    participant TEXT,
    round INTEGER,
    base_version INTEGER,
    -- the model version current when it was refused: it counts towards version + 1
    during_version INTEGER,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL
);
"""


class LedgerError(RuntimeError):
    """The ledger cannot be used as it is; the message says what to do."""


class UpdateLedger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        if "versions" in tables:
            found = self.get_meta("schema") if "meta" in tables else None
            if found != SCHEMA_VERSION:
                self._db.close()
                raise LedgerError(
                    f"{path} was written by an older fedq (ledger schema {found or 1}, this "
                    f"one reads {SCHEMA_VERSION}): use a new --state-dir"
                )
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, *args: Any) -> Any:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def _all(self, sql: str, *args: Any) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

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
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                        version.epsilon,
                    ),
                )
                self._db.executemany(
                    "INSERT INTO updates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                            u.digest,
                            json.dumps(u.metrics),
                            u.size,
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
        base_version: int | None,
        during_version: int,
        reason: str,
        detail: str,
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO rejections (update_id, participant, round, base_version, "
                "during_version, reason, detail, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    update_id,
                    participant,
                    round_,
                    base_version,
                    during_version,
                    reason,
                    detail,
                    time.time(),
                ),
            )

    def digest_of(self, update_id: str) -> str | None:
        """The body digest of committed update ``update_id``, or None if not committed."""
        value = self._one("SELECT digest FROM updates WHERE update_id = ?", update_id)
        return None if value is None else str(value)

    def has_update(self, update_id: str) -> bool:
        return self.digest_of(update_id) is not None

    def last_version(self) -> VersionRecord | None:
        rows = self._all(
            "SELECT version, round, closed_by, total_weight, opened_at, committed_at, "
            "checkpoint, metrics, n_updates, epsilon FROM versions ORDER BY version DESC LIMIT 1"
        )
        if not rows:
            return None
        version, round_, closed_by, total, opened, committed, checkpoint, metrics, n, eps = rows[0]
        return VersionRecord(
            version,
            round_,
            closed_by,
            total,
            opened,
            committed,
            checkpoint,
            json.loads(metrics),
            n,
            eps,
        )

    def count_updates(self) -> int:
        return int(self._one("SELECT COUNT(*) FROM updates"))

    def rejection_counts(self) -> dict[str, int]:
        rows = self._all("SELECT reason, COUNT(*) FROM rejections GROUP BY reason ORDER BY reason")
        return {reason: int(n) for reason, n in rows}

    def history(self) -> list[RoundHistory]:
        """Every committed version with its updates and what was refused while it was open."""
        with self._lock:
            versions = self._db.execute(
                "SELECT version, round, closed_by, n_updates, opened_at, committed_at, metrics, "
                "epsilon FROM versions ORDER BY version"
            ).fetchall()
            updates = self._db.execute(
                "SELECT version, participant, base_version, staleness, bytes, num_examples, "
                "metrics FROM updates ORDER BY version, participant, base_version"
            ).fetchall()
            rejected = self._db.execute(
                "SELECT during_version, reason, COUNT(*) FROM rejections "
                "GROUP BY during_version, reason"
            ).fetchall()
        by_version: dict[int, list[tuple[str, int, int]]] = {}
        sizes: dict[int, int] = {}
        local: dict[int, list[tuple[int, dict[str, float]]]] = {}
        for version, participant, base, staleness, size, examples, metrics in updates:
            by_version.setdefault(version, []).append((participant, int(base), int(staleness)))
            sizes[version] = sizes.get(version, 0) + int(size)
            local.setdefault(version, []).append((int(examples), json.loads(metrics)))
        refused: dict[int | None, dict[str, int]] = {}
        for during, reason, n in rejected:
            refused.setdefault(during, {})[reason] = int(n)
        return [
            RoundHistory(
                version=v,
                round=r,
                closed_by=closed_by,
                n_updates=n,
                participants=[p for p, _, _ in by_version.get(v, [])],
                rejected=refused.get(v - 1, {}),
                seconds=committed - opened,
                metrics=json.loads(metrics),
                updates=by_version.get(v, []),
                epsilon=epsilon,
                update_bytes=sizes.get(v, 0),
                local_metrics=weighted_mean(local.get(v, [])),
            )
            for v, r, closed_by, n, opened, committed, metrics, epsilon in versions
        ]

    def rejections(self) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._db.execute(
                "SELECT update_id, participant, round, base_version, during_version, reason, "
                "detail, at FROM rejections ORDER BY id"
            )
            cols = [c[0] for c in cursor.description]
            return [dict(zip(cols, row, strict=True)) for row in cursor.fetchall()]

    def update_ids_by_version(self) -> dict[str, int]:
        rows = self._all("SELECT update_id, version FROM updates")
        return {uid: int(v) for uid, v in rows}

    def updates_of(self, version: int) -> list[UpdateRecord]:
        """The updates committed in ``version``, as recorded."""
        rows = self._all(
            "SELECT update_id, participant, round, base_version, num_examples, weight, "
            "staleness, digest, metrics, bytes FROM updates WHERE version = ? "
            "ORDER BY participant",
            version,
        )
        return [
            UpdateRecord(uid, p, r, base, n, w, tau, digest, json.loads(metrics), size)
            for uid, p, r, base, n, w, tau, digest, metrics, size in rows
        ]


def weighted_mean(samples: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Each metric averaged over the updates that report it, weighted by their examples."""
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for examples, metrics in samples:
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + examples * float(value)
            weights[key] = weights.get(key, 0) + examples
    return {k: sums[k] / weights[k] for k in sorted(sums) if weights[k] > 0}
