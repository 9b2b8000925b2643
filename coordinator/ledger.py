"""The SQLite ledger: which updates made which committed model version, and what was refused.

Invariant (exactly-once): ``updates.update_id`` is the primary key, and a version's updates
are inserted in the same transaction as the version itself, so an update id belongs to at
most one committed version, and a version is committed with all of its updates or none.
Each update's body digest is kept, so a later copy of a committed id is told apart: the
same bytes are a duplicate, other bytes a conflicting duplicate.
Tamper evidence: each version stores the sha256 of its checkpoint file and ``chain``, the
sha256 of its own row, its updates' rows and the previous version's ``chain``
(:func:`chain_hash`); ``fedq audit`` recomputes both (:mod:`fedq.coordinator.audit`).
Calls block; the coordinator runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from fedq.coordinator.records import RoundHistory, UpdateRecord, VersionRecord

#: Bumped when a table changes; a ledger of another schema is refused with what to do.
SCHEMA_VERSION = "4"

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
    epsilon REAL,
    -- sha256 of the checkpoint file, and of this record chained to the previous one's
    checkpoint_sha256 TEXT NOT NULL,
    chain TEXT NOT NULL
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

    def commit_version(self, version: VersionRecord, updates: list[UpdateRecord]) -> str:
        """Atomically record ``version`` and the updates it incorporated, chained to the
        previous version (the checkpoint file must be written already: it is hashed).
        Returns the version's chain hash, the ledger's new head."""
        checkpoint_sha256 = file_sha256(Path(version.checkpoint))
        # Each value as the type its column stores (REAL: float), so that the hash of
        # what is written is the hash of what is read back.
        row = (
            int(version.version),
            _int_or_none(version.round),
            version.closed_by,
            len(updates),
            float(version.total_weight),
            float(version.opened_at),
            float(version.committed_at),
            version.checkpoint,
            json.dumps(version.metrics),
            None if version.epsilon is None else float(version.epsilon),
            checkpoint_sha256,
        )
        update_rows = [
            (
                u.update_id,
                int(version.version),
                u.participant,
                _int_or_none(u.round),
                int(u.base_version),
                int(u.num_examples),
                float(u.weight),
                int(u.staleness),
                u.digest,
                json.dumps(u.metrics),
                int(u.size),
            )
            for u in updates
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                prev = self._db.execute(
                    "SELECT chain FROM versions ORDER BY version DESC LIMIT 1"
                ).fetchone()
                chain = chain_hash(GENESIS if prev is None else prev[0], row, update_rows)
                self._db.execute(
                    f"INSERT INTO versions ({VERSION_COLUMNS}, chain) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*row, chain),
                )
                self._db.executemany(
                    f"INSERT INTO updates ({UPDATE_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    update_rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return chain

    def chained_rows(self) -> list[tuple[tuple[Any, ...], list[tuple[Any, ...]], str]]:
        """Every version's row, its updates' rows and its stored chain, as hashed."""
        with self._lock:
            versions = self._db.execute(
                f"SELECT {VERSION_COLUMNS}, chain FROM versions ORDER BY version"
            ).fetchall()
            updates = self._db.execute(f"SELECT {UPDATE_COLUMNS} FROM updates").fetchall()
        by_version: dict[int, list[tuple[Any, ...]]] = {}
        for u in updates:
            by_version.setdefault(u[1], []).append(tuple(u))
        return [(tuple(v[:-1]), by_version.get(v[0], []), str(v[-1])) for v in versions]

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

    def duplicated_update_ids(self) -> list[tuple[str, int]]:
        rows = self._all(
            "SELECT update_id, COUNT(*) FROM updates GROUP BY update_id HAVING COUNT(*) > 1"
        )
        return [(str(uid), int(n)) for uid, n in rows]

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


#: The columns a version's and an update's hash cover, in this order.
VERSION_COLUMNS = (
    "version, round, closed_by, n_updates, total_weight, opened_at, committed_at, checkpoint, "
    "metrics, epsilon, checkpoint_sha256"
)
UPDATE_COLUMNS = (
    "update_id, version, participant, round, base_version, num_examples, weight, staleness, "
    "digest, metrics, bytes"
)
#: What the first version chains to.
GENESIS = "0" * 64


def chain_hash(prev: str, row: tuple[Any, ...], updates: list[tuple[Any, ...]]) -> str:
    """sha256 of a version's row, its updates' rows (by update id) and the previous chain.

    JSON of the values as SQLite stores them: floats round-trip exactly through both, so
    recomputing from the ledger gives the same bytes."""
    payload = json.dumps(
        [prev, list(row), [list(u) for u in sorted(updates, key=lambda u: str(u[0]))]],
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _int_or_none(value: int | None) -> int | None:
    return None if value is None else int(value)
