"""Settling what is not folded: a refusal or a duplicate leaves the coordinator's hands at
once, and is never lost.

In this order: a refused body is copied to the dead-letter queue (``fedq.F.rejected``)
with its reason in ``x-fedq-reason``, within the queue's bounds (:mod:`.evidence`); the
delivery is acked, copied or not; the ledger records it (once per update, whatever its
chunks), saying when its copy is missing; the observers hear of it. A crash between the
copy and the ack leaves the delivery on the broker, which settles it again: the
dead-letter queue may hold a copy twice, the ledger never loses one.
"""

from __future__ import annotations

import asyncio
import logging

from fedq.coordinator.assembly import Stream
from fedq.coordinator.evidence import Evidence, without_copy
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.observers import Observers, UpdateSeen
from fedq.coordinator.verdicts import Outcome, Refused, Rejection, Settled
from fedq.messages.transport import Delivery, TransportError

log = logging.getLogger("fedq.coordinator")


class Settler:
    def __init__(self, evidence: Evidence, ledger: UpdateLedger, observers: Observers) -> None:
        self.evidence = evidence
        self.ledger = ledger
        self.observers = observers

    async def settle(
        self, verdict: Settled, delivery: Delivery, during: int, size: int | None = None
    ) -> None:
        """Dead-letter (a refusal), ack and record ``delivery``, settled while model
        ``during`` was current. ``size``: the body's bytes, when ``delivery`` is not the
        one that brought them (a held copy it replaced)."""
        outcome = verdict.outcome()
        if verdict.dead_letter:
            dropped = await self.evidence.keep(delivery, delivery.body, outcome)
            outcome = without_copy(outcome, [dropped] if dropped else [])
        await self._ack(delivery)
        size = len(delivery.body) if size is None else size
        await self._record(outcome, delivery.message_id, during, size)

    async def settle_stream(self, stream: Stream, rejection: Rejection, during: int) -> None:
        """A refused chunked update: each chunk that came goes to the dead-letter queue as
        it came (read back from the spool) with the reason, and is acked; the ledger
        records the update's refusal once."""
        outcome = Refused(rejection, stream.meta).outcome()
        dropped: list[str] = []
        for index in sorted(stream.chunks):
            delivery = stream.chunks[index].delivery
            body = await asyncio.to_thread(stream.read, index)
            if cause := await self.evidence.keep(delivery, body, outcome):
                dropped.append(cause)
            await self._ack(delivery)
        stream.close()
        outcome = without_copy(outcome, dropped, len(stream.chunks))
        await self._record(outcome, stream.update_id, during, stream.size)

    @staticmethod
    async def _ack(delivery: Delivery) -> None:
        try:
            await delivery.ack()
        except TransportError as exc:  # redelivered later and settled again
            log.warning("ack of a refused update failed: %s", exc)

    async def _record(
        self, outcome: Outcome, message_id: str | None, during: int, size: int
    ) -> None:
        """A settled update into the ledger and to the observers."""
        meta = outcome.meta
        await asyncio.to_thread(
            self.ledger.record_rejection,
            meta.update_id if meta else message_id,
            meta.participant if meta else None,
            meta.round if meta else None,
            meta.base_version if meta else None,
            during,
            outcome.reason,
            outcome.detail,
        )
        self.observers.update_seen(
            UpdateSeen(
                meta.participant if meta else None,
                False,
                outcome.reason,
                meta.base_version if meta else None,
                size=size,
            )
        )
