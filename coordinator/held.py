"""The deliveries the coordinator holds unacked: those of each update folded into the open
version (one, or one per chunk of a chunked update).

An update is acked only once the version that includes it is committed (checkpoint and
ledger), so a crash before that leaves it on the broker for the next coordinator. This
object owns those deliveries and nothing else does: at most one per accepted update id, so
what it holds never exceeds the open version's K contributors, whatever senders publish
(another copy of a held id is settled at the intake at once, never held).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fedq.messages.transport import Delivery, TransportError

log = logging.getLogger("fedq.coordinator")


@dataclass(frozen=True)
class HeldUpdate:
    #: By chunk index (0 for an update in one message).
    deliveries: dict[int, Delivery]
    #: Digest of the body (released once folded), or of a chunked update's whole: a later
    #: copy is compared against it.
    digest: str


class HeldDeliveries:
    def __init__(self) -> None:
        self._held: dict[str, HeldUpdate] = {}

    def __len__(self) -> int:
        return len(self._held)

    def digest_of(self, update_id: str) -> str | None:
        held = self._held.get(update_id)
        return None if held is None else held.digest

    def hold(self, update_id: str, deliveries: dict[int, Delivery], digest: str) -> None:
        """Keep ``deliveries`` for the commit; their bodies are dropped (the fold has them)."""
        assert update_id not in self._held, "a held update id is settled at the intake"
        for delivery in deliveries.values():
            delivery.release_body()
        self._held[update_id] = HeldUpdate(dict(deliveries), digest)

    def replace(self, update_id: str, copy: Delivery, chunk: int = 0) -> Delivery:
        """Hold ``copy``, the same bytes as the held update (or its chunk ``chunk``),
        instead; return the delivery it replaces, for the caller to ack (``copy`` itself
        when there is no such chunk).

        The newest copy is the one kept: after a reconnect the broker redelivers what was
        unacked, and the old delivery's channel is gone, so acking the new copy and keeping
        the old would leave nothing on the broker to redeliver if the coordinator then died
        before the commit. Acking the old one instead costs nothing either way.
        """
        deliveries = self._held[update_id].deliveries
        if chunk not in deliveries:
            return copy
        copy.release_body()
        replaced, deliveries[chunk] = deliveries[chunk], copy
        return replaced

    async def ack_all(self) -> None:
        """After the commit: ack every held delivery and forget them.

        A failed ack (its channel closed) is harmless: the broker redelivers the update,
        and the intake finds its id committed and counts it as a duplicate.
        """
        held, self._held = self._held, {}
        for update_id, update in held.items():
            for delivery in update.deliveries.values():
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
