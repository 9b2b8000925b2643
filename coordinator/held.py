"""The deliveries the coordinator holds unacked: those of each update folded into the open
version (one, or one per chunk of a chunked update).

An update is acked only once the version that includes it is committed (checkpoint and
ledger), so a crash before that leaves it on the broker for the next coordinator. This
object owns those deliveries and nothing else does: at most one per accepted update id, so
what it holds never exceeds the open version's K contributors, whatever senders publish
(another copy of a held id is settled at the intake at once, never held).

RabbitMQ closes the channel of a consumer that keeps a delivery unacked for longer than
its ``consumer_timeout`` (30 minutes by default), and a version may stay open longer than
that. So a delivery held for half of it is returned to the queue (nack with requeue) and
taken again when the broker delivers it anew: the same bytes under the same id, which the
intake sees as a copy of a held update and :meth:`replace` keeps without counting it. It is
on the broker the whole time, so a crash in between loses nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from fedq.messages.transport import Delivery, TransportError

log = logging.getLogger("fedq.coordinator")


@dataclass(frozen=True)
class HeldUpdate:
    #: By chunk index (0 for an update in one message).
    deliveries: dict[int, Delivery]
    #: By chunk index, what a later copy must match to be held instead: the body's digest
    #: (the body is released once folded), or a chunk's :func:`~.intake.chunk_copy_digest`.
    copies: dict[int, str]
    #: When each delivery was taken (monotonic seconds), by chunk index.
    taken_at: dict[int, float] = field(default_factory=dict)
    #: Chunk indices returned to the queue and not delivered again yet.
    returned: set[int] = field(default_factory=set)


class HeldDeliveries:
    def __init__(self) -> None:
        self._held: dict[str, HeldUpdate] = {}

    def __len__(self) -> int:
        return len(self._held)

    def copy_digest(self, update_id: str, chunk: int) -> str | None:
        """What a copy of ``chunk`` of the update held under ``update_id`` must match (""
        for a chunk it has not: nothing matches), or None when nothing is held under it."""
        held = self._held.get(update_id)
        return None if held is None else held.copies.get(chunk, "")

    def hold(self, update_id: str, deliveries: dict[int, Delivery], copies: dict[int, str]) -> None:
        """Keep ``deliveries`` for the commit; their bodies are dropped (the fold has them)."""
        assert update_id not in self._held, "a held update id is settled at the intake"
        for delivery in deliveries.values():
            delivery.release_body()
        now = time.monotonic()
        self._held[update_id] = HeldUpdate(
            dict(deliveries), dict(copies), {index: now for index in deliveries}
        )

    def replace(self, update_id: str, copy: Delivery, chunk: int = 0) -> Delivery | None:
        """Hold ``copy``, the same bytes as the held update (or its chunk ``chunk``),
        instead; return the delivery it replaces, for the caller to ack (``copy`` itself
        when there is no such chunk), or None when ``copy`` is a returned delivery coming
        back: nothing to ack, and not a duplicate.

        The newest copy is the one kept: after a reconnect the broker redelivers what was
        unacked, and the old delivery's channel is gone, so acking the new copy and keeping
        the old would leave nothing on the broker to redeliver if the coordinator then died
        before the commit. Acking the old one instead costs nothing either way.
        """
        held = self._held[update_id]
        deliveries = held.deliveries
        if chunk not in deliveries:
            return copy
        copy.release_body()
        held.taken_at[chunk] = time.monotonic()
        replaced, deliveries[chunk] = deliveries[chunk], copy
        if chunk in held.returned:
            held.returned.discard(chunk)
            return None
        return replaced

    def next_return(self, after: float) -> float | None:
        """When (monotonic) the oldest delivery still held will have been held ``after``
        seconds; None when nothing is held."""
        times = [
            at
            for update in self._held.values()
            for index, at in update.taken_at.items()
            if index not in update.returned
        ]
        return min(times) + after if times else None

    async def return_older_than(self, after: float) -> int:
        """Return to the queue every delivery held for ``after`` seconds or more (before the
        broker's consumer_timeout closes the channel); each comes back as a copy that
        :meth:`replace` keeps. Returns how many went back."""
        now = time.monotonic()
        returned = 0
        for update_id, update in self._held.items():
            for index, delivery in update.deliveries.items():
                if index in update.returned or now - update.taken_at[index] < after:
                    continue
                update.returned.add(index)
                try:
                    await delivery.nack(requeue=True)
                except TransportError as exc:  # its channel is gone: the broker has it again
                    log.warning("returning held update %s failed: %s", update_id, exc)
                returned += 1
        return returned

    async def ack_all(self) -> None:
        """After the commit: ack every held delivery and forget them.

        A failed ack (its channel closed) is harmless: the broker redelivers the update,
        and the intake finds its id committed and counts it as a duplicate.
        """
        held, self._held = self._held, {}
        for update_id, update in held.items():
            for index, delivery in update.deliveries.items():
                if index not in update.returned:  # a returned one comes back as a duplicate
                    await self._ack(update_id, delivery)

    @staticmethod
    async def _ack(update_id: str, delivery: Delivery) -> None:
        try:
            await delivery.ack()
        except TransportError as exc:
            log.warning(
                "ack of committed update %s failed (%s); it will come back as a duplicate",
                update_id,
                exc,
            )
