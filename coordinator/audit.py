"""``fedq audit``: check that a federation's ledger and checkpoints are what was committed.

What is checked, for one federation's folder (``ledger.sqlite`` and ``models/``):

- the versions are 1, 2, ... with no gap, and each has as many update rows as it says;
- every version's ``chain`` equals the sha256 of its row, its updates' rows and the
  previous version's recomputed chain: a changed, added or removed row breaks its version
  and, since each link hashes the one before, every later one unless all of them were
  recomputed;
- every version's checkpoint file exists and its sha256 is the one recorded;
- no update id appears twice (the table's key forbids it; a rebuilt table would not);
- given participants' sent logs (:mod:`fedq.runtime.sent_log`), every update the broker
  confirmed to them is in a committed version or was refused with a reason: none lost.
  Run it once the federation is over: an update of the open version is in neither yet.

The ledger is opened read-only (:class:`~fedq.coordinator.ledger_view.LedgerView`), in one
snapshot: auditing a running federation's ledger changes nothing and sees one state.
The chain's head is printed: recorded elsewhere (a log, a ticket), it also catches a ledger
rewritten whole, which no check inside the ledger can. Version 0 (the initial model) is
not in the ledger and not checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedq.coordinator.checkpoint import file_sha256
from fedq.coordinator.ledger import GENESIS, chain_hash
from fedq.coordinator.ledger_schema import LedgerDamaged, LedgerNotCreated, reading
from fedq.coordinator.ledger_view import LedgerView
from fedq.runtime.sent_log import SentUpdate

#: After a damaged newest checkpoint: what goes on without it (:mod:`.rollback`).
RESUME_HINT = (
    "; it is the newest: `fedq coordinator ... --from-last-good` goes on from the newest "
    "version whose checkpoint is sound"
)


@dataclass
class AuditReport:
    ledger: Path
    versions: int = 0
    checkpoints: int = 0
    updates: int = 0
    head: str = GENESIS
    #: Of the sent logs' updates for this federation: how many were committed, refused.
    sent_committed: int = 0
    sent_refused: int = 0
    failures: list[str] = field(default_factory=list)
    #: Why the ledger could not be read at all (damaged): then nothing else was checked.
    unreadable: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and self.unreadable is None


@dataclass
class _Recorded:
    """What the audit reads of a ledger, in one snapshot."""

    rows: list[tuple[tuple[Any, ...], list[tuple[Any, ...]], str]]
    duplicated: list[tuple[str, int]]
    federation: str | None
    committed: dict[str, int]
    refused: set[str]


def _read(ledger_path: Path) -> _Recorded:
    """Everything the audit checks, from one snapshot of the ledger; a damaged file is a
    :class:`~fedq.coordinator.ledger_schema.LedgerDamaged`."""
    with LedgerView.open(ledger_path) as ledger, reading(ledger_path), ledger.snapshot():
        return _Recorded(
            rows=ledger.chained_rows(),
            duplicated=ledger.duplicated_update_ids(),
            federation=ledger.get_meta("federation"),
            committed=ledger.update_ids_by_version(),
            refused={r["update_id"] for r in ledger.rejections() if r["reason"] != "duplicate"},
        )


def audit(ledger_path: Path, sent: Sequence[SentUpdate] = ()) -> AuditReport:
    report = AuditReport(ledger_path)
    models = ledger_path.parent / "models"
    try:
        recorded = _read(ledger_path)
    except LedgerNotCreated:  # its coordinator is creating it: nothing committed to check
        return report
    except LedgerDamaged as exc:  # a failed audit, not a crash of the auditor
        report.unreadable = str(exc)
        return report
    rows, duplicated, federation = recorded.rows, recorded.duplicated, recorded.federation
    committed, refused = recorded.committed, recorded.refused
    chain = GENESIS
    for expected, (row, updates, stored) in enumerate(rows, start=1):
        version, n_updates, checkpoint, checkpoint_sha256 = row[0], row[3], row[7], row[10]
        report.versions += 1
        report.updates += len(updates)
        if version != expected:
            report.failures.append(f"v{version}: expected v{expected} (a version is missing)")
        if n_updates != len(updates):
            report.failures.append(
                f"v{version}: records {n_updates} updates but {len(updates)} rows refer to it"
            )
        chain = chain_hash(chain, row, updates)
        if chain != stored:
            report.failures.append(
                f"v{version}: its record or one before it changed (chain {stored[:12]} "
                f"recorded, {chain[:12]} recomputed)"
            )
        path = models / Path(checkpoint).name
        # The newest one is what a coordinator resumes from: the flag that goes back.
        todo = RESUME_HINT if expected == len(rows) else ""
        if not path.is_file():
            report.failures.append(f"v{version}: checkpoint {path} is missing{todo}")
        elif file_sha256(path) != checkpoint_sha256:
            report.failures.append(f"v{version}: checkpoint {path} does not match its sha256{todo}")
        else:
            report.checkpoints += 1
    report.head = chain
    report.failures += [f"update {uid} appears {n} times" for uid, n in duplicated]
    for update in sent:
        if update.federation != federation:
            continue
        if update.update_id in committed:
            report.sent_committed += 1
        elif update.update_id in refused:
            report.sent_refused += 1
        else:
            report.failures.append(
                f"update {update.update_id} of {update.participant} (on v{update.base_version})"
                " was confirmed by the broker but is in no version and was not refused: lost"
            )
    return report
