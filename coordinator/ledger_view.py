"""The one read model of the ledger: every reader of a ledger reads it through here.

``fedq history``, ``fedq audit``, the dashboard, and the coordinator itself (whose
:class:`~fedq.coordinator.ledger.UpdateLedger` is this view plus the writes) ask a
:class:`LedgerView`; no other module holds a SELECT. A version is summarised by
:func:`~fedq.coordinator.records.summary_of` here as at commit, so observers and ``fedq
history`` show the same record.

What must stay true:

- a view opened with :meth:`LedgerView.open` cannot write (SQLite opens the file
  ``mode=ro``): a reader never changes what the coordinator recorded, and reading a live
  federation's ledger is safe (WAL: readers do not block the writer);
- whatever is read inside :meth:`LedgerView.snapshot` comes from one committed state, even
  while the coordinator commits;
- a ledger of another schema, or one still being created, is refused with a
  :class:`~fedq.coordinator.ledger_schema.LedgerError` saying so, never misread.

Calls block; async callers run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from fedq.coordinator.attendance import Attendance, attendance
from fedq.coordinator.ledger_schema import (
    UPDATE_COLUMNS,
    VERSION_COLUMNS,
    LedgerError,
    LedgerNotCreated,
    check_schema,
    reading,
)
from fedq.coordinator.records import UpdateRecord, VersionRecord, VersionSummary, summary_of

#: The ledger's file name in a federation's folder.
LEDGER = "ledger.sqlite"

_VERSION = (
    "version, round, closed_by, total_weight, opened_at, committed_at, checkpoint, metrics, "
    "n_updates, epsilon"
)
_UPDATE = (
    "update_id, participant, round, base_version, num_examples, weight, staleness, digest, "
    "metrics, bytes"
)
#: A refusal as ``fedq history`` (and the attendance) reads it, oldest first.
_REJECTION = "update_id, participant, round, base_version, during_version, reason, detail, at"
#: A refusal as the dashboard pages the dead-letter queue, newest first by ``id``.
_DEAD_LETTER = "id, at, participant, update_id, base_version, during_version, reason, detail"


@dataclass(frozen=True)
class ParticipantAccount:
    """A participant's account in the ledger."""

    participant: str
    accepted: int = 0
    rejected: int = 0
    #: Of its accepted updates: the largest and the latest staleness (versions behind).
    max_staleness: int = 0
    last_staleness: int = 0
    #: Its accepted updates over every participant's: 0 for one the federation leaves out.
    share: float = 0.0
    #: Its updates refused as ``stale`` during versions after the newest it was folded
    #: into (every one, if none was): a straggler being left behind, while it lasts.
    stale_since_folded: int = 0


@dataclass(frozen=True)
class FederationHistory:
    """One ledger as ``fedq history`` shows it; its fields are ``--json``'s keys."""

    federation: str
    state_dir: str
    #: A summary per committed version (named ``rounds`` in the JSON since its first day).
    rounds: list[VersionSummary]
    rejections: list[dict[str, Any]]
    #: Per version, who was on time, late, refused or missing (see :mod:`.attendance`).
    attendance: list[Attendance]


class LedgerView:
    """Everything recorded in one ledger, read over ``db`` (guarded by one re-entrant lock,
    as the writer shares it between threads)."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.path = path
        self._db = db
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path) -> LedgerView:
        """The ledger at ``path``, read-only; LedgerError if it is not one this fedq reads
        (:class:`~fedq.coordinator.ledger_schema.LedgerDamaged`: not a database, or corrupt)."""
        with reading(path):
            db = connect_read_only(path)
            try:
                check_schema(db, path, created=True)
            except BaseException:
                db.close()
                raise
        return cls(db, path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> LedgerView:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees one committed state (nested: the outer one's)."""
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            self._db.execute("BEGIN")
            try:
                yield
            finally:
                self._db.execute("COMMIT")

    def _one(self, sql: str, *args: Any) -> Any:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def _all(self, sql: str, *args: Any) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _dicts(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._db.execute(sql, args)
            cols = [c[0] for c in cursor.description]
            return [dict(zip(cols, row, strict=True)) for row in cursor.fetchall()]

    # ------------------------------------------------------------ versions
    def get_meta(self, key: str) -> str | None:
        value = self._one("SELECT value FROM meta WHERE key = ?", key)
        return None if value is None else str(value)

    @property
    def federation(self) -> str:
        """The federation it records (its folder's name if the ledger does not say)."""
        return self.get_meta("federation") or self.path.parent.name

    def versions(self) -> list[VersionRecord]:
        """Every committed version, oldest first."""
        return [
            _version(row) for row in self._all(f"SELECT {_VERSION} FROM versions ORDER BY version")
        ]

    def checkpoint_digests(self) -> list[tuple[int, str, str]]:
        """Every committed version's checkpoint file and its recorded sha256, newest first."""
        rows = self._all(
            "SELECT version, checkpoint, checkpoint_sha256 FROM versions ORDER BY version DESC"
        )
        return [(int(v), str(c), str(s)) for v, c, s in rows]

    def last_version(self) -> VersionRecord | None:
        rows = self._all(f"SELECT {_VERSION} FROM versions ORDER BY version DESC LIMIT 1")
        return _version(rows[0]) if rows else None

    def updates_of(self, version: int) -> list[UpdateRecord]:
        """The updates committed in ``version``, as recorded, by participant."""
        rows = self._all(
            f"SELECT {_UPDATE} FROM updates WHERE version = ? ORDER BY participant, "
            "base_version, update_id",
            version,
        )
        return [_update(row) for row in rows]

    def history(self) -> list[VersionSummary]:
        """Every committed version, summarised by ``summary_of`` from what is stored, as the
        coordinator summarises it for its observers at commit: the two must stay equal."""
        with self.snapshot():
            versions = self.versions()
            updates: dict[int, list[UpdateRecord]] = {}
            for row in self._all(
                f"SELECT version, {_UPDATE} FROM updates "
                "ORDER BY version, participant, base_version, update_id"
            ):
                updates.setdefault(row[0], []).append(_update(row[1:]))
            refused: dict[int, dict[str, int]] = {}
            for during, reason, n in self._all(
                "SELECT during_version, reason, COUNT(*) FROM rejections "
                "WHERE during_version IS NOT NULL GROUP BY during_version, reason"
            ):
                refused.setdefault(int(during), {})[reason] = int(n)
        return [
            summary_of(v, updates.get(v.version, []), refused.get(v.version - 1, {}))
            for v in versions
        ]

    # ----------------------------------------------------------- refusals
    def rejections(self) -> list[dict[str, Any]]:
        """Every refusal (duplicates included), oldest first."""
        return self._dicts(f"SELECT {_REJECTION} FROM rejections ORDER BY id")

    def rejection_counts(self) -> dict[str, int]:
        rows = self._all("SELECT reason, COUNT(*) FROM rejections GROUP BY reason ORDER BY reason")
        return {reason: int(n) for reason, n in rows}

    def dead_letters(
        self, *, limit: int, before_id: int | None = None, reason: str | None = None
    ) -> list[dict[str, Any]]:
        """A page of refusals, newest first: at most ``limit``, older than ``before_id`` if
        given, of ``reason`` only if given. The dead-letter queue as the ledger recorded it,
        browsed without consuming a message."""
        where: list[str] = ["1"]
        args: list[int | str] = []
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        if reason:
            where.append("reason = ?")
            args.append(reason)
        return self._dicts(
            f"SELECT {_DEAD_LETTER} FROM rejections WHERE {' AND '.join(where)} "
            "ORDER BY id DESC LIMIT ?",
            *args,
            limit,
        )

    # -------------------------------------------------------- participants
    def participants(self) -> list[ParticipantAccount]:
        """Every participant named by an update or a refusal, by id."""
        accepted = {
            p: (n, worst, last)
            for p, n, worst, last in self._all(
                "SELECT participant, COUNT(*), MAX(staleness), "
                "(SELECT u2.staleness FROM updates u2 WHERE u2.participant = u.participant "
                " ORDER BY u2.version DESC LIMIT 1) "
                "FROM updates u GROUP BY participant"
            )
        }
        rejected = dict(
            self._all(
                "SELECT participant, COUNT(*) FROM rejections WHERE participant IS NOT NULL "
                "GROUP BY participant"
            )
        )
        stale = dict(
            self._all(
                "WITH folded AS (SELECT participant, MAX(version) AS version FROM updates "
                "GROUP BY participant) "
                "SELECT r.participant, COUNT(*) FROM rejections r "
                "LEFT JOIN folded f ON f.participant = r.participant "
                "WHERE r.reason = 'stale' AND r.participant IS NOT NULL "
                "AND r.during_version >= COALESCE(f.version, 0) GROUP BY r.participant"
            )
        )
        total = sum(n for n, _, _ in accepted.values())
        accounts = []
        for participant in sorted(accepted.keys() | rejected.keys()):
            n, worst, last = accepted.get(participant, (0, 0, 0))
            accounts.append(
                ParticipantAccount(
                    participant,
                    n,
                    rejected.get(participant, 0),
                    worst,
                    last,
                    share=n / total if total else 0.0,
                    stale_since_folded=stale.get(participant, 0),
                )
            )
        return accounts

    def federation_history(self) -> FederationHistory:
        with self.snapshot():
            rounds, rejections = self.history(), self.rejections()
            return FederationHistory(
                federation=self.federation,
                state_dir=str(self.path.parent),
                rounds=rounds,
                rejections=rejections,
                attendance=attendance(rounds, rejections),
            )

    # ------------------------------------------------ exactly-once, audit
    def digest_of(self, update_id: str) -> str | None:
        """The body digest of committed update ``update_id``, or None if not committed."""
        value = self._one("SELECT digest FROM updates WHERE update_id = ?", update_id)
        return None if value is None else str(value)

    def has_update(self, update_id: str) -> bool:
        return self.digest_of(update_id) is not None

    def count_updates(self) -> int:
        return int(self._one("SELECT COUNT(*) FROM updates"))

    def update_ids_by_version(self) -> dict[str, int]:
        return {uid: int(v) for uid, v in self._all("SELECT update_id, version FROM updates")}

    def duplicated_update_ids(self) -> list[tuple[str, int]]:
        rows = self._all(
            "SELECT update_id, COUNT(*) FROM updates GROUP BY update_id HAVING COUNT(*) > 1"
        )
        return [(str(uid), int(n)) for uid, n in rows]

    def chained_rows(self) -> list[tuple[tuple[Any, ...], list[tuple[Any, ...]], str]]:
        """Every version's row, its updates' rows and its stored chain, as hashed."""
        with self.snapshot():
            versions = self._all(f"SELECT {VERSION_COLUMNS}, chain FROM versions ORDER BY version")
            updates = self._all(f"SELECT {UPDATE_COLUMNS} FROM updates")
        by_version: dict[int, list[tuple[Any, ...]]] = {}
        for u in updates:
            by_version.setdefault(u[1], []).append(tuple(u))
        return [(tuple(v[:-1]), by_version.get(v[0], []), str(v[-1])) for v in versions]


def _version(row: Any) -> VersionRecord:
    version, round_, closed_by, total, opened, committed, checkpoint, metrics, n, eps = row
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


def _update(row: Any) -> UpdateRecord:
    uid, participant, round_, base, examples, weight, tau, digest, metrics, size = row
    return UpdateRecord(
        uid, participant, round_, base, examples, weight, tau, digest, json.loads(metrics), size
    )


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write: SQLite refuses every change through it. A short
    busy timeout: a reader waits for a checkpoint at most 2 s, not for as long as a writer."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    return sqlite3.connect(
        uri, uri=True, timeout=2.0, check_same_thread=False, isolation_level=None
    )


@contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """:func:`connect_read_only`, closed at the end of the block."""
    with closing(connect_read_only(path)) as db:
        yield db


def find_ledgers(state_dir: Path) -> dict[str, Path]:
    """Federation folder name -> its ledger, under ``state_dir`` (one level deep); a folder
    that is itself a federation's state works too."""
    if (state_dir / LEDGER).is_file():
        return {state_dir.name: state_dir / LEDGER}
    if not state_dir.is_dir():
        return {}
    return {p.parent.name: p for p in sorted(state_dir.glob(f"*/{LEDGER}"))}


def ledgers_under(root: Path) -> list[Path]:
    """The ledgers in ``root`` (one federation's folder, or a state dir of them), oldest
    first; none is a LedgerError saying where to look."""
    ledgers = sorted(find_ledgers(root).values(), key=lambda p: p.stat().st_mtime)
    if not ledgers:
        raise LedgerError(
            f"no ledger under {root}: pass the --state-dir a coordinator or simulate used"
        )
    return ledgers


def read_histories(root: Path, federation: str | None = None) -> list[FederationHistory]:
    """``fedq history``: each ledger under ``root`` (only ``federation``'s if given), oldest
    first; none is a LedgerError saying where to look."""
    ledgers = ledgers_under(root)
    if federation is not None:
        ledgers = [p for p in ledgers if p.parent.name == federation or p.parent == root]
        if not ledgers:
            raise LedgerError(f"no ledger of {federation} under {root}")
    histories = []
    for path in ledgers:
        try:
            view = LedgerView.open(path)
        except LedgerNotCreated:  # its coordinator is creating it: nothing recorded yet
            histories.append(FederationHistory(path.parent.name, str(path.parent), [], [], []))
            continue
        with view, reading(path):  # a page found corrupt while reading: one line too
            histories.append(view.federation_history())
    return histories
