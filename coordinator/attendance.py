"""Who was on time, late or missing in each committed version, derived from the ledger.

Nothing new is recorded: a version's updates (participant, base version, staleness) and the
refusals (participant, base version, the version current then, reason) are enough.

Round modes (sync, quorum), version v = round v, trained on model v - 1:

- on time: an update on model v - 1 folded into v;
- late: an update on model v - 1 folded into a later version (``--late-updates fold``), or
  refused as ``stale`` (its round had closed, or the federation was done);
- refused: an update on model v - 1 refused for another reason (norm, shape, ...);
- missing: every other participant the ledger knows: nothing on model v - 1 reached the
  coordinator (it dropped out, or it was still busy with an older model and the
  newest-only model queue moved it on to a later one).

Async mode has no rounds: version v is a window, from the commit of v - 1 to the commit
of v, and the question is who showed up in it:

- on time: an update folded into v that was trained on v - 1 (staleness 0);
- late: an update folded into v trained on an older model (staleness > 0: normal when N > K,
  the staleness says how late), or refused as ``stale`` while v - 1 was current;
- refused: refused for another reason while v - 1 was current;
- missing: every other participant the ledger knows: nothing arrived in the window.

"Known" means named by some committed update or refusal of the run (a participant that
never sent anything is not in the ledger, so it is never listed). Duplicates, forged and
other federations' updates change nothing. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedq.coordinator.records import VersionSummary

#: Refusals that mean "it came too late".
LATE_REASONS = frozenset({"stale"})
#: Refusals that say nothing about a participant's attendance: a second copy of an update
#: counted elsewhere, or a message that is not this participant's (forged) or federation's,
#: or an update of a version rolled back (``--from-last-good``), which it attended.
IGNORED_REASONS = frozenset({"duplicate", "forged", "wrong_federation", "rolled_back"})


@dataclass(frozen=True)
class LateUpdate:
    participant: str
    base_version: int
    #: The version it was folded into, or None: it was refused as stale.
    folded_into: int | None
    #: Versions behind when it was folded or refused.
    staleness: int


@dataclass(frozen=True)
class Attendance:
    """One committed version: its participants by how they attended (ids in natural order)."""

    version: int
    #: None in async mode (the definitions differ; see the module's docstring).
    round: int | None
    on_time: list[str] = field(default_factory=list)
    late: list[LateUpdate] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def natural(participant: str) -> tuple[Any, ...]:
    """Sort key: ``p2`` before ``p10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", participant))


@dataclass(frozen=True)
class _Refusal:
    participant: str
    base_version: int | None
    during_version: int | None
    reason: str


def _refusals(rejections: Iterable[Mapping[str, Any]]) -> list[_Refusal]:
    return [
        _Refusal(r["participant"], r["base_version"], r["during_version"], r["reason"])
        for r in rejections
        if r.get("participant") and r["reason"] not in IGNORED_REASONS
    ]


def attendance(
    rows: Iterable[VersionSummary], rejections: Iterable[Mapping[str, Any]]
) -> list[Attendance]:
    """One Attendance per committed version of ``rows`` (``LedgerView.history()``), from
    them and the refusals (``LedgerView.rejections()``)."""
    rows = sorted(rows, key=lambda r: r.version)
    refusals = _refusals(rejections)
    known = {p for row in rows for p, _, _ in row.updates} | {r.participant for r in refusals}
    # (participant, base version) -> (version folded into, staleness), for round modes.
    folded: dict[tuple[str, int], tuple[int, int]] = {}
    for row in rows:
        for p, base, tau in row.updates:
            folded.setdefault((p, base), (row.version, tau))
    out = []
    for row in rows:
        if row.round is None:
            on_time, late, refused = _window(row, refusals)
        else:
            on_time, late, refused = _round(row, folded, refusals)
        seen = set(on_time) | {u.participant for u in late} | set(refused)
        out.append(
            Attendance(
                version=row.version,
                round=row.round,
                on_time=sorted(set(on_time), key=natural),
                late=sorted(late, key=lambda u: (natural(u.participant), u.base_version)),
                refused=sorted(set(refused) - set(on_time), key=natural),
                missing=sorted(known - seen, key=natural),
            )
        )
    return out


def _round(
    row: VersionSummary,
    folded: Mapping[tuple[str, int], tuple[int, int]],
    refusals: list[_Refusal],
) -> tuple[list[str], list[LateUpdate], list[str]]:
    """Round v: what became of the updates trained on model v - 1."""
    base = row.version - 1
    on_time = [p for (p, b), (v, _) in folded.items() if b == base and v == row.version]
    late = [
        LateUpdate(p, b, v, tau)
        for (p, b), (v, tau) in folded.items()
        if b == base and v > row.version
    ]
    counted = set(on_time) | {u.participant for u in late}
    refused: list[str] = []
    for r in refusals:
        if r.base_version != base or r.participant in counted:
            continue
        if r.reason in LATE_REASONS:
            during = base if r.during_version is None else r.during_version
            late.append(LateUpdate(r.participant, base, None, during - base))
            counted.add(r.participant)
        else:
            refused.append(r.participant)
    return on_time, late, [p for p in refused if p not in counted]


def _window(
    row: VersionSummary, refusals: list[_Refusal]
) -> tuple[list[str], list[LateUpdate], list[str]]:
    """Async version v: what arrived while model v - 1 was current."""
    on_time = [p for p, _, tau in row.updates if tau == 0]
    late = [LateUpdate(p, base, row.version, tau) for p, base, tau in row.updates if tau > 0]
    refused: list[str] = []
    for r in refusals:
        if r.during_version != row.version - 1:
            continue
        if r.reason in LATE_REASONS and r.base_version is not None:
            tau = row.version - 1 - r.base_version
            late.append(LateUpdate(r.participant, r.base_version, None, tau))
        else:
            refused.append(r.participant)
    counted = set(on_time) | {u.participant for u in late}
    return on_time, late, [p for p in refused if p not in counted]


def describe_late(late: Iterable[LateUpdate]) -> str:
    """``p3 (tau 1), p7 (refused)``: folded ones with their staleness, refused ones marked."""
    return ", ".join(
        f"{u.participant} (refused)"
        if u.folded_into is None
        else f"{u.participant} (tau {u.staleness})"
        for u in late
    )
