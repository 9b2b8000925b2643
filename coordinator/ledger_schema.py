"""The ledger's tables: the contract between the one writer (:mod:`.ledger`) and every reader
(:mod:`.ledger_view`).

A ledger is a SQLite file whose ``meta`` table names the schema it was written with; a
reader or writer of another schema refuses it with what to do rather than misread it. Bump
:data:`SCHEMA_VERSION` whenever a table changes. ``fedq audit`` hashes the columns of
:data:`VERSION_COLUMNS` and :data:`UPDATE_COLUMNS` in that order: changing either breaks the
hash chain of every ledger already written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
TABLES = frozenset({"meta", "versions", "updates", "rejections"})

#: The columns a version's and an update's hash cover, in this order.
VERSION_COLUMNS = (
    "version, round, closed_by, n_updates, total_weight, opened_at, committed_at, checkpoint, "
    "metrics, epsilon, checkpoint_sha256"
)
UPDATE_COLUMNS = (
    "update_id, version, participant, round, base_version, num_examples, weight, staleness, "
    "digest, metrics, bytes"
)


class LedgerError(RuntimeError):
    """The ledger cannot be used as it is; the message says what to do."""


class SchemaMismatch(LedgerError):
    """The ledger was written by a fedq of another schema (``found``; None: the first one,
    which had no ``meta`` table)."""

    def __init__(self, path: Path, found: str | None) -> None:
        super().__init__(
            f"{path} was written by an older fedq (ledger schema {found or 1}, this one reads "
            f"{SCHEMA_VERSION}): use a new --state-dir"
        )
        self.found = found


class LedgerNotCreated(LedgerError):
    """The file has not all the tables yet: its coordinator is creating them."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path}: the ledger is not created yet; try again once its coordinator runs"
        )


class LedgerDamaged(LedgerError):
    """The file is not a SQLite database, or SQLite found it corrupt."""

    def __init__(self, path: Path, exc: sqlite3.DatabaseError) -> None:
        super().__init__(
            f"{path} is damaged ({exc}): restore it from a backup, or start over with a new "
            "--state-dir; the checkpoints in models/ are kept (--from-last-good needs the "
            "ledger: it is what tells a good checkpoint)"
        )


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """What SQLite raises on the ledger at ``path`` as a :class:`LedgerError` saying what to
    do: a damaged file is :class:`LedgerDamaged`; any other database error (a file that
    cannot be opened, a lock held too long) names itself and the file."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            raise LedgerDamaged(path, exc) from None
        raise LedgerError(f"{path}: {exc}") from None


def check_schema(db: sqlite3.Connection, path: Path, *, created: bool) -> None:
    """Refuse a ledger of another schema (:class:`SchemaMismatch`) and, if ``created``, one
    whose tables are not all there yet (:class:`LedgerNotCreated`). A file without a
    ``versions`` table is a new ledger, never a mismatch."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "versions" in tables:
        found = None
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            found = None if row is None else str(row[0])
        if found != SCHEMA_VERSION:
            raise SchemaMismatch(path, found)
    if created and not tables >= TABLES:
        raise LedgerNotCreated(path)
