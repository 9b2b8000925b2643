"""The SQLite ledger's one writer: which updates made which committed model version, and
what was refused.

Invariant (exactly-once): ``updates.update_id`` is the primary key, and a version's updates
are inserted in the same transaction as the version itself, so an update id belongs to at
most one committed version, and a version is committed with all of its updates or none.
Each update's body digest is kept, so a later copy of a committed id is told apart: the
same bytes are a duplicate, other bytes a conflicting duplicate.
Tamper evidence: each version stores the sha256 of its checkpoint file and ``chain``, the
sha256 of its own row, its updates' rows and the previous version's ``chain``
(:func:`chain_hash`); ``fedq audit`` recomputes both (:mod:`fedq.coordinator.audit`).
The tables are :mod:`.ledger_schema`'s; every read, the coordinator's own included, is
:class:`~fedq.coordinator.ledger_view.LedgerView`'s, which this class extends with writes.
Calls block; the coordinator runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fedq.coordinator.checkpoint import file_sha256
from fedq.coordinator.ledger_schema import (
    SCHEMA,
    UPDATE_COLUMNS,
    VERSION_COLUMNS,
    check_schema,
    reading,
)
from fedq.coordinator.ledger_view import LedgerView
from fedq.coordinator.records import RejectionRecord, UpdateRecord, VersionRecord
from fedq.runtime.printable import printable

#: The ``meta`` key of when the last version was committed and announced (``federation.
#: done``), as wall-clock seconds: a federation that finished, for readers of the ledger
#: alone (the dashboard of a finished run). A coordinator started again clears nothing;
#: readers compare it with newer activity.
FINISHED_AT = "finished_at"


class UpdateLedger(LedgerView):
    """The ledger of one federation, opened for writing (created if new); a damaged file
    is a :class:`~fedq.coordinator.ledger_schema.LedgerDamaged`."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with reading(path):
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                check_schema(db, path, created=False)
                db.executescript(SCHEMA)
            except BaseException:
                db.close()
                raise
        super().__init__(db, path)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction, taken at once (``BEGIN IMMEDIATE``), under the lock:
        committed when the block ends, rolled back if it raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def commit_version(
        self,
        version: VersionRecord,
        updates: list[UpdateRecord],
        checkpoint_sha256: str | None = None,
    ) -> str:
        """Atomically record ``version`` and the updates it incorporated, chained to the
        previous version (the checkpoint file must be written already: it is hashed here
        unless ``checkpoint_sha256``, its hash as written, is given). Returns the version's
        chain hash, the ledger's new head."""
        if checkpoint_sha256 is None:
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
        with self._transaction():
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
                f"INSERT INTO updates ({UPDATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                update_rows,
            )
        return chain

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
        """One refused or duplicate delivery (:meth:`record_rejections`)."""
        self.record_rejections(
            [
                RejectionRecord(
                    update_id, participant, round_, base_version, during_version, reason, detail
                )
            ]
        )

    def record_rejections(self, records: Sequence[RejectionRecord]) -> None:
        """Refused or duplicate deliveries, in one transaction: one write to the disk for
        all (the coordinator settles refusals in batches, :mod:`.settle`). Their values come
        from messages that may have been refused for them, so each is made storable whatever
        it holds: text printable and bounded, an integer beyond SQLite's int64 stored as
        NULL (SQLite would raise, and the delivery, never acked, would come back to raise
        again)."""
        at = time.time()
        rows = [
            (
                _text_or_none(r.update_id, MAX_ID_CHARS),
                _text_or_none(r.participant, MAX_ID_CHARS),
                _int64_or_none(r.round),
                _int64_or_none(r.base_version),
                int(r.during_version),
                printable(r.reason, MAX_ID_CHARS),
                printable(r.detail),
                at,
            )
            for r in records
        ]
        with self._transaction():
            self._db.executemany(
                "INSERT INTO rejections (update_id, participant, round, base_version, "
                "during_version, reason, detail, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def backup(self, path: Path) -> None:
        """A consistent copy of the ledger at ``path`` (SQLite's online backup)."""
        copy = sqlite3.connect(path)
        try:
            with self._lock:
                self._db.backup(copy)
        finally:
            copy.close()

    def roll_back(self, good: int, detail: str) -> int:
        """Remove every version after ``good`` and its updates, in one transaction; each of
        those updates is recorded as refused ``rolled_back`` with ``detail`` instead (it is
        not in the model any more, and its delivery was acked: no copy comes back), so that
        every update the broker confirmed is still committed or refused. The chain of
        versions 1 to ``good`` is untouched: its head is ``good``'s. Returns the updates
        rolled back."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO rejections (update_id, participant, round, base_version, "
                "during_version, reason, detail, at) SELECT update_id, participant, round, "
                "base_version, version - 1, 'rolled_back', ? || ' (was in v' || version "
                "|| ')', ? FROM updates WHERE version > ?",
                (printable(detail), time.time(), good),
            )
            removed = self._db.execute("DELETE FROM updates WHERE version > ?", (good,))
            self._db.execute("DELETE FROM versions WHERE version > ?", (good,))
        return int(removed.rowcount)


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


def _int_or_none(value: int | None) -> int | None:
    return None if value is None else int(value)


#: An id in a rejection row: a broker message id is at most 255 bytes.
MAX_ID_CHARS = 255
_INT64 = range(-(2**63), 2**63)


def _int64_or_none(value: object) -> int | None:
    """``value`` if it is an integer SQLite stores, else None."""
    return value if isinstance(value, int) and value in _INT64 else None


def _text_or_none(value: object, limit: int) -> str | None:
    return None if value is None else printable(value, limit)
