"""The dead-letter queue as evidence: a refused body's copy, its headers, and its bounds.

``fedq.F.rejected`` is declared with a byte limit, a message limit and ``x-overflow:
reject-publish`` (:meth:`~fedq.messages.topology.Topology.rejected_arguments`): once full,
RabbitMQ refuses new copies and keeps the ones it has, so a flood cannot push the first
evidence out (drop-head would let it). Whether a refused body gets its copy is decided
here:

- with ``--verify-identity``, one broker user's copies may take at most
  ``--dead-letter-share`` of the queue's bytes and of its messages, so one participant's
  flood leaves room for the evidence of the others (``sender_share``);
- the broker refuses a copy once the queue is full (``queue_full``), or finds no queue
  (``unroutable``: an operator deleted it).

A copy not made never stalls the coordinator: the caller still acks the delivery and
records the refusal in the ledger, noting why its copy is missing (the record is the
evidence that remains); each is counted (:meth:`.observers.CoordinatorObserver.dead_letter_dropped`,
``fedq_dead_letter_dropped_total``) and a warning is logged at most once a minute.

What one user holds is kept in memory, per broker user (RabbitMQ vouches for ``user_id``;
a claimed participant id is the sender's to make up), for at most N + 64 users: further
users and messages without a ``user_id`` share one tally, so what this remembers is
bounded whatever is published. The tallies count what this coordinator copied: they start
at zero when it starts (the ledger does not know what an operator has taken out of the
queue since, so tallies rebuilt from it would lock a sender out of an emptied queue), and
again whenever the queue is found empty. So across a restart one user may hold its share
once more; the queue's own limits, the broker's, hold whatever happens.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.observers import Observers
from fedq.coordinator.verdicts import Outcome
from fedq.messages.topology import Topology, dead_letter_messages
from fedq.messages.transport import QueueFull, Transport, TransportError, Unroutable

log = logging.getLogger("fedq.coordinator")

#: The header of a dead-lettered body that says why it was refused.
REASON_HEADER = "x-fedq-reason"
#: The sender's headers a dead-letter copy keeps (what fedq's participants set), when each
#: value is a short string or an int64: every other header is dropped, never copied.
KEPT_HEADERS = frozenset(
    {"federation", "participant", "round", "base_version", "chunk_index", "chunk_count"}
)
#: The longest string a kept header, or the reason, carries into a dead-letter copy.
MAX_HEADER_CHARS = 256
MAX_REASON_CHARS = 1024

#: Why a refused body has no copy: the ``cause`` label of fedq_dead_letter_dropped_total.
QUEUE_FULL = "queue_full"
SENDER_SHARE = "sender_share"
UNROUTABLE = "unroutable"
#: What the ledger's record of such a refusal says of it.
NOTES = {
    QUEUE_FULL: "the dead-letter queue is full, at --dead-letter-bytes",
    SENDER_SHARE: "its broker user holds its --dead-letter-share of the dead-letter queue",
    UNROUTABLE: "there is no dead-letter queue",
}
#: Seconds between two warnings about copies not made: one line, not one per copy.
WARN_EVERY_SECONDS = 60.0
#: Seconds between two looks whether the queue was emptied (the tallies then restart).
RECHECK_SECONDS = 5.0
#: Broker users tallied apart beyond the N participants; further ones share one tally.
SENDER_SLACK = 64


class Original(Protocol):
    """What a copy takes of the delivery it copies (a :class:`~fedq.messages.transport.Delivery`
    has it all)."""

    @property
    def user_id(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def headers(self) -> Mapping[str, Any]: ...


@dataclass
class _Held:
    """What one broker user's copies take of the queue, as far as this coordinator knows."""

    bytes: int = 0
    messages: int = 0


class Evidence:
    def __init__(
        self,
        config: CoordinatorConfig,
        transport: Transport,
        topology: Topology,
        observers: Observers,
    ) -> None:
        self.transport = transport
        self.queue = topology.rejected
        self.observers = observers
        share = config.dead_letter_share if config.verify_identity else 1.0
        #: Per user: None when the share is off (1, or no --verify-identity).
        self.share: _Held | None = None
        if share < 1:
            limit = topology.dead_letter_max_bytes
            most = dead_letter_messages(limit)
            self.share = _Held(max(1, int(share * limit)), max(1, int(share * most)))
        self.capacity = config.participants + SENDER_SLACK
        self.held: dict[str | None, _Held] = {}
        self._looked = float("-inf")
        #: Copies on their way to the queue, and copies begun in all.
        self._copying = 0
        self._begun = 0
        self._warned = float("-inf")
        self._unwarned: Counter[str] = Counter()

    async def keep(self, delivery: Original, body: bytes, outcome: Outcome) -> str | None:
        """Copy ``body`` (what ``delivery`` brought) to the dead-letter queue with
        ``outcome``'s reason. Returns None once the broker took it, else why it has no
        copy (:data:`NOTES`); raises only what a broker outage raises."""
        sender = self._sender(delivery.user_id)
        if not await self._within_share(sender, len(body)):
            return self._dropped(SENDER_SHARE, outcome)
        # Counted before it is sent, taken back if it is not: copies made at once (the
        # settler's) each see the others' in the sender's share.
        self._count(sender, len(body), 1)
        headers = dead_letter_headers(delivery.headers, outcome)
        self._copying += 1
        self._begun += 1
        try:
            await self.transport.publish(
                "",
                self.queue,
                body,
                message_id=delivery.message_id,
                type=delivery.type,
                headers=headers,
                mandatory=True,
            )
        except BaseException as exc:
            self._count(sender, -len(body), -1)
            if isinstance(exc, QueueFull):
                return self._dropped(QUEUE_FULL, outcome)
            if isinstance(exc, Unroutable):
                return self._dropped(UNROUTABLE, outcome)
            raise
        finally:
            self._copying -= 1
        log.info("rejected update: %s", headers[REASON_HEADER])
        return None

    def _count(self, sender: str | None, size: int, messages: int) -> None:
        """Add to ``sender``'s tally (when the share is on); never below zero (the tallies
        may have restarted while a copy taken back was on its way)."""
        if self.share is not None:
            held = self.held.setdefault(sender, _Held())
            held.bytes = max(0, held.bytes + size)
            held.messages = max(0, held.messages + messages)

    def _sender(self, user: str | None) -> str | None:
        """The tally ``user`` counts in: its own while there is room for it, else None,
        shared with messages that name no user."""
        if user is None or user in self.held or len(self.held) < self.capacity:
            return user
        return None

    async def _within_share(self, sender: str | None, size: int) -> bool:
        """Whether ``sender`` may have one more copy of ``size`` bytes. Before saying no,
        look (at most every RECHECK_SECONDS) whether the queue was emptied meanwhile: an
        operator took the evidence out, and every tally starts again."""
        share = self.share
        if share is None:
            return True
        held = self.held.get(sender, _Held())
        if held.bytes + size <= share.bytes and held.messages < share.messages:
            return True
        now = time.monotonic()
        if now - self._looked < RECHECK_SECONDS or self._copying:
            # With copies on their way, an empty queue says nothing of what an operator
            # took out: they may not be in it yet.
            return False
        self._looked = now
        begun = self._begun
        try:
            emptied = await self.transport.queue_depth(self.queue) == 0
        except TransportError:
            return False
        emptied = emptied and self._begun == begun  # and none began while it looked
        if emptied:
            self.held.clear()
        return emptied and size <= share.bytes

    def _dropped(self, cause: str, outcome: Outcome) -> str:
        """Count a copy not made; warn once, then at most every WARN_EVERY_SECONDS."""
        self.observers.dead_letter_dropped(outcome.reason, cause)
        self._unwarned[cause] += 1
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY_SECONDS:
            counts = ", ".join(f"{n} {c}" for c, n in sorted(self._unwarned.items()))
            log.warning(
                "%s: refused updates not copied there (since the last such warning): %s; each is "
                "still acked, recorded in the ledger and counted in "
                "fedq_dead_letter_dropped_total (next warning in %.0f s at the earliest)",
                self.queue,
                counts,
                WARN_EVERY_SECONDS,
            )
            self._warned = now
            self._unwarned.clear()
        return cause


def without_copy(outcome: Outcome, causes: list[str], copies: int = 1) -> Outcome:
    """``outcome`` as the ledger records it when ``causes`` (one per copy not made, of
    ``copies``) say its body, or some of its chunks, has no copy in the dead-letter queue."""
    if not causes:
        return outcome
    why = "; ".join(NOTES[c] for c in sorted(set(causes)))
    which = "no copy in" if copies == 1 else f"{len(causes)} of {copies} chunks not copied to"
    return Outcome(outcome.meta, outcome.reason, f"{which} the DLQ ({why}): {outcome.detail}")


def dead_letter_headers(sent: Mapping[str, Any], outcome: Outcome) -> dict[str, Any]:
    """The headers of a dead-letter copy, rebuilt from a bounded allow-list: a sender's
    header is whatever it chose (a value just under the broker's frame size, a table
    nested deep), and copied whole with the reason added it could make the copy too large
    for a frame, so that the refusal itself fails."""
    kept = {name: sent[name] for name in KEPT_HEADERS if _keepable(sent.get(name))}
    kept[REASON_HEADER] = _bounded(outcome.header(), MAX_REASON_CHARS)
    return kept


def _keepable(value: object) -> bool:
    """A short string or an int64: what fedq's own headers hold."""
    if isinstance(value, str):
        return len(value) <= MAX_HEADER_CHARS
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
