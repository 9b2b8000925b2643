"""Modes: which updates the open version admits, and when it is committed.

Every mode collects updates into one open version at a time: model ``version`` is current,
the commit makes ``version + 1``. It closes once K updates are in (``quorum``), or at its
deadline with at least ``min_quorum`` of them (``deadline``; below that the deadline
extends). The modes differ in what they admit:

- ``sync``: round r trains on model r - 1; every participant's update for it, K = N.
- ``quorum``: the same rounds with K of N; an update for a closed round is ``stale``, or,
  with ``late_updates = fold``, folded into the open version with the staleness factor
  s(tau), up to ``max_staleness`` versions behind.
- ``async`` (FedBuff, Nguyen et al., AISTATS 2022): no rounds. An update trained on any
  base version up to ``max_staleness`` behind is folded with s(tau); every K updates make
  a version. With an async remedy (``--async-remedy``, :mod:`.strategies.remedies`) no
  update is refused for its staleness unless ``--max-staleness`` is given.

tau = version - base_version; s(tau) = (1 + tau)^-a. One update per participant and base
version (in async mode, per version): a second is ``already_submitted``. Pure: no I/O,
no transport, no ledger.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Literal

from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.records import UpdateRecord
from fedq.coordinator.verdicts import Admitted, Rejection
from fedq.messages.schema import UpdateMeta

CloseReason = Literal["quorum", "deadline"]


@dataclass
class OpenVersion:
    """The version being collected: its updates so far and when it may close."""

    version: int
    #: The round it belongs to (round modes: version + 1), None in async mode.
    round: int | None
    quorum: int
    min_quorum: int
    deadline_seconds: float
    opened_wall: float = field(default_factory=time.time)
    opened: float = field(default_factory=time.monotonic)
    extensions: int = 0
    records: list[UpdateRecord] = field(default_factory=list)
    #: Whether updates trained on an older model count toward the quorum. In round modes
    #: they do not: a late update folded in (``--late-updates fold``) counts beside the
    #: round's fresh ones, never instead of them, or the next round's fresh updates would
    #: arrive late in turn and every version slide into being made of stale ones.
    late_counts: bool = True
    #: With client sampling: the participants drawn to train on this version's model;
    #: a fresh update from anyone else is refused (``not_sampled``). None: everyone.
    sample: frozenset[str] | None = None

    def __post_init__(self) -> None:
        assert 1 <= self.min_quorum <= self.quorum, "need 1 <= min_quorum <= quorum"

    @property
    def contributors(self) -> list[str]:
        return [r.participant for r in self.records]

    @property
    def total_weight(self) -> float:
        return sum(r.num_examples for r in self.records)

    @property
    def counted(self) -> int:
        """Updates toward the quorum (and the deadline's minimum)."""
        if self.late_counts:
            return len(self.records)
        return sum(1 for r in self.records if r.staleness == 0)

    def submitted(self, participant: str, base_version: int | None = None) -> bool:
        """Whether ``participant`` has an update in this version (on ``base_version``, or
        on any when None)."""
        return any(
            r.participant == participant and base_version in (None, r.base_version)
            for r in self.records
        )

    def seconds_left(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return self.opened + self.deadline_seconds * (1 + self.extensions) - now

    def close_reason(self, now: float | None = None) -> CloseReason | None:
        """Why the version may be committed now, or None. Extends an expired deadline
        while fewer than ``min_quorum`` updates are in."""
        count = self.counted
        if count >= self.quorum:
            return "quorum"
        if self.seconds_left(now) <= 0:
            if count >= self.min_quorum:
                return "deadline"
            self.extensions += 1
        return None


class Mode(abc.ABC):
    name: str

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config

    #: True when versions are made in numbered rounds (round.open / round.closed events).
    has_rounds = True

    def open(self, version: int) -> OpenVersion:
        return OpenVersion(
            version=version,
            round=version + 1 if self.has_rounds else None,
            quorum=self.config.k,
            min_quorum=self.config.min_k,
            deadline_seconds=self.config.round_timeout,
            late_counts=not self.has_rounds,
        )

    def admit(self, open_: OpenVersion, meta: UpdateMeta) -> Admitted:
        """Admit ``meta`` into ``open_`` or raise Rejection (stale, ahead, second update)."""
        tau = open_.version - meta.base_version
        if tau < 0:
            raise Rejection(
                "unknown_round",
                f"{describe(meta)} is ahead of the current model v{open_.version}",
            )
        if tau > self.max_staleness():
            raise Rejection(
                "stale",
                f"{describe(meta)} is {tau} versions behind model v{open_.version}; at most "
                f"{self.max_staleness()} are admitted",
            )
        self.check_round(open_, meta, tau)
        if tau == 0 and open_.sample is not None and meta.participant not in open_.sample:
            raise Rejection(
                "not_sampled",
                f"{meta.participant} was not drawn to train on model v{open_.version}",
            )
        if open_.submitted(meta.participant, self.one_per(meta)):
            raise Rejection(
                "already_submitted",
                f"{meta.participant} already has an update "
                f"{'' if self.one_per(meta) is None else f'on model v{meta.base_version} '}"
                "in this version",
            )
        return Admitted(tau, self.config.staleness_factor(tau))

    def max_staleness(self) -> int:
        """No cutoff with an async remedy unless --max-staleness is given."""
        return self.config.staleness_cutoff

    def one_per(self, meta: UpdateMeta) -> int | None:
        """One update per participant and what: its base version (round modes, where a
        late update folded beside a fresh one is a straggler's), or None: one per version
        whatever it was trained on."""
        return meta.base_version

    def check_round(self, open_: OpenVersion, meta: UpdateMeta, tau: int) -> None:
        """Round modes: the update's round must match its base version."""
        if meta.round is None or meta.round != meta.base_version + 1:
            raise Rejection(
                "unknown_round",
                f"update names round {meta.round} for model v{meta.base_version}; "
                f"round r trains on model r - 1",
            )


class QuorumMode(Mode):
    name = "quorum"

    def max_staleness(self) -> int:
        return self.config.max_staleness if self.config.late_updates == "fold" else 0


class SyncMode(QuorumMode):
    """Quorum mode with K = N (the config enforces it)."""

    name = "sync"


class AsyncMode(Mode):
    name = "async"
    has_rounds = False

    def check_round(self, open_: OpenVersion, meta: UpdateMeta, tau: int) -> None:
        """No rounds: whatever round an update names is ignored."""

    def one_per(self, meta: UpdateMeta) -> int | None:
        """One update per participant per version, whatever its base version: else one
        participant trained on several recent models could fill a whole version (K
        updates) alone. ``async_one_per_version`` off: one per base version."""
        return None if self.config.async_one_per_version else meta.base_version


@dataclass(frozen=True)
class AfterTheLast:
    """Admission once the federation is done (an :class:`~.verdicts.Admission`): nothing
    is held, every update is late, none is folded."""

    version: int

    def held_digest(self, update_id: str, chunk: int) -> str | None:
        return None

    def admit(self, meta: UpdateMeta, user: str | None) -> Admitted:
        raise Rejection(
            "stale",
            f"{describe(meta)} arrived after the last version, v{self.version}, was committed",
        )


def describe(meta: UpdateMeta) -> str:
    where = "" if meta.round is None else f" for round {meta.round}"
    return f"update on model v{meta.base_version}{where}"


MODES: dict[str, type[Mode]] = {m.name: m for m in (SyncMode, QuorumMode, AsyncMode)}


def make_mode(config: CoordinatorConfig) -> Mode:
    return MODES[config.mode](config)
