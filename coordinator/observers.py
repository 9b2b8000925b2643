"""Hooks for whoever watches a coordinator: the CLI's live view, metrics, a dashboard, tests.

Subclass :class:`CoordinatorObserver` and override what you need; the rest do nothing. A
coordinator takes any number of them and calls each in turn. Hooks run on the event loop:
they must return quickly and never block it. An observer that raises is logged and the
federation goes on: watching must never stop the work.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from fedq.coordinator.records import VersionSummary
from fedq.coordinator.stall import Stall

log = logging.getLogger("fedq.coordinator")


@dataclass(frozen=True)
class UpdateSeen:
    """One delivery's outcome at the intake."""

    participant: str | None
    accepted: bool
    #: The rejection's machine-readable reason; None when accepted.
    reason: str | None = None
    base_version: int | None = None
    staleness: int | None = None
    #: Bytes of the message body as received.
    size: int = 0
    #: The participant's local training metrics it sent (``loss``, ``accuracy`` ...).
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CommitTimings:
    """Where a commit's time went, in seconds."""

    version: int
    #: The aggregation's result and the server optimizer's step.
    aggregate: float
    evaluate: float
    #: Writing the checkpoint (model and optimizer state, fsynced).
    checkpoint: float
    #: The ledger's transaction.
    ledger: float


class CoordinatorObserver:
    def version_opened(self, version: int, round_: int | None) -> None:
        """The coordinator collects updates for the version after ``version`` (round
        ``round_`` in sync and quorum mode; None in async mode)."""

    def update_seen(self, update: UpdateSeen) -> None:
        """An update was accepted into the open version or refused with a reason."""

    def dead_letter_dropped(self, reason: str, cause: str) -> None:
        """An update refused for ``reason`` has no copy in the dead-letter queue:
        ``cause`` is ``queue_full``, ``sender_share`` or ``unroutable``
        (:mod:`.evidence`). Its refusal is in the ledger all the same."""

    def version_committed(self, row: VersionSummary) -> None:
        """A new model version is committed and published; ``row`` is the record ``fedq
        history`` reads back for it from the ledger."""

    def commit_timed(self, timings: CommitTimings) -> None:
        """How long the parts of the last commit took."""

    def participants_alive(self, alive: int) -> None:
        """How many participants joined or beat within the liveness window and did not leave."""

    def sample_drawn(self, version: int, among: list[str], sampled: list[str] | None) -> None:
        """With client sampling: the participants drawn to train on model ``version``
        (sorted), from those alive at that moment, ``among`` (sorted); None when fewer than
        a sample were alive, and everyone trains."""

    def version_stalled(self, version: int, stall: Stall | None) -> None:
        """Version ``version`` cannot close with the participants alive (``stall`` says
        why: :mod:`.stall`), or, with None, it can again (or was committed)."""

    def participant_left_behind(self, participant: str, version: int, refused: int) -> None:
        """``participant``'s last ``refused`` updates were refused as stale: it was sent
        model ``version`` to train on (:mod:`.stale_notice`)."""


class Observers(CoordinatorObserver):
    """Many observers as one; a failing observer is logged, not fatal."""

    def __init__(self, observers: Sequence[CoordinatorObserver] = ()) -> None:
        self.observers = list(observers)

    def _each(self, hook: str, *args: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args)
            except Exception:
                log.exception("observer %s failed in %s", type(observer).__name__, hook)

    def version_opened(self, version: int, round_: int | None) -> None:
        self._each("version_opened", version, round_)

    def update_seen(self, update: UpdateSeen) -> None:
        self._each("update_seen", update)

    def dead_letter_dropped(self, reason: str, cause: str) -> None:
        self._each("dead_letter_dropped", reason, cause)

    def version_committed(self, row: VersionSummary) -> None:
        self._each("version_committed", row)

    def commit_timed(self, timings: CommitTimings) -> None:
        self._each("commit_timed", timings)

    def participants_alive(self, alive: int) -> None:
        self._each("participants_alive", alive)

    def sample_drawn(self, version: int, among: list[str], sampled: list[str] | None) -> None:
        self._each("sample_drawn", version, among, sampled)

    def version_stalled(self, version: int, stall: Stall | None) -> None:
        self._each("version_stalled", version, stall)

    def participant_left_behind(self, participant: str, version: int, refused: int) -> None:
        self._each("participant_left_behind", participant, version, refused)
