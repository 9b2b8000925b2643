"""Settling what is not folded: a refusal or a duplicate leaves the coordinator's hands at
once, and is never lost.

Per delivery, in this order: a refused body is copied to the dead-letter queue
(``fedq.F.rejected``) with its reason in ``x-fedq-reason``, within the queue's bounds
(:mod:`.evidence`); the delivery is acked, copied or not; the ledger records it (once per
update, whatever its chunks), saying when its copy is missing; the observers hear of it. A
crash between the copy and the ack leaves the delivery on the broker, which settles it
again: the dead-letter queue may hold a copy twice, the ledger never loses one.

Refusals come in floods: with N = 1,000 and a quorum of 100, 900 stale updates a version,
all in the queue ahead of the next version's. Settled one after the other, each waited for
its copy's confirm and its own ledger transaction before the collector took the next
delivery, and a loaded machine's every wait made a version minutes long. So
:meth:`Settler.settle` starts a settlement and returns: up to :data:`SETTLING_AT_ONCE` run
beside the collection (the consumer's prefetch bounds them further, since a delivery stays
unacked until settled, so what they hold is bounded either way), their copies are confirmed
together, and their ledger rows are written in one transaction per trip to the ledger's
thread (:class:`~.group_write.GroupWrite`). :meth:`Settler.drain` waits for them all: the
collector drains before a version closes, so every delivery taken while it was open is
settled before it commits. A settlement that failed (the broker gone beyond the transport's
patience, the disk full) fails the next call, as it failed the collection before.
"""

from __future__ import annotations

import asyncio
import logging

from fedq.coordinator.assembly import Stream
from fedq.coordinator.evidence import Evidence, without_copy
from fedq.coordinator.group_write import GroupWrite
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.observers import Observers, UpdateSeen
from fedq.coordinator.records import RejectionRecord
from fedq.coordinator.verdicts import Outcome, Refused, Rejection, Settled
from fedq.messages.transport import Delivery, TransportError

log = logging.getLogger("fedq.coordinator")

#: Settlements under way at once, at most.
SETTLING_AT_ONCE = 32


class Settler:
    def __init__(
        self,
        evidence: Evidence,
        ledger: UpdateLedger,
        observers: Observers,
        at_once: int = SETTLING_AT_ONCE,
    ) -> None:
        self.evidence = evidence
        self.observers = observers
        self._rows = GroupWrite(ledger.record_rejections)
        self._room = asyncio.Semaphore(at_once)
        self._settling: set[asyncio.Task[None]] = set()
        self._failed: BaseException | None = None

    async def settle(
        self, verdict: Settled, delivery: Delivery, during: int, size: int | None = None
    ) -> None:
        """Start to dead-letter (a refusal), ack and record ``delivery``, settled while
        model ``during`` was current; returns once it is under way. ``size``: the body's
        bytes, when ``delivery`` is not the one that brought them (a held copy it
        replaced). Raises what an earlier settlement failed with."""
        self._raise_failure()
        await self._room.acquire()
        task = asyncio.create_task(self._settle(verdict, delivery, during, size))
        self._settling.add(task)
        task.add_done_callback(self._settled)

    async def _settle(
        self, verdict: Settled, delivery: Delivery, during: int, size: int | None
    ) -> None:
        outcome = verdict.outcome()
        size = len(delivery.body) if size is None else size
        if verdict.dead_letter:
            dropped = await self.evidence.keep(delivery, delivery.body, outcome)
            outcome = without_copy(outcome, [dropped] if dropped else [])
        message_id = delivery.message_id
        await self._ack(delivery)
        # Acked, its body is nobody's: let it go now, not once its row is written (a flood
        # of settlements waiting on the ledger would hold every body they were given).
        del delivery
        await self._record(outcome, message_id, during, size)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        self._room.release()
        if not task.cancelled() and (error := task.exception()) is not None:
            self._failed = self._failed or error

    def _raise_failure(self) -> None:
        if self._failed is not None:
            raise self._failed

    async def drain(self) -> None:
        """Wait until every settlement under way is done; raise what one failed with."""
        while self._settling:
            await asyncio.wait(set(self._settling))
        self._raise_failure()

    async def aclose(self) -> None:
        """Stop the settlements under way (the run ends without its end: a signal, a lost
        broker): what was not acked comes back to the next coordinator."""
        settling = list(self._settling)
        for task in settling:
            task.cancel()
        await asyncio.gather(*settling, return_exceptions=True)

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
        participant = meta.participant if meta else None
        base_version = meta.base_version if meta else None
        await self._rows.add(
            RejectionRecord(
                meta.update_id if meta else message_id,
                participant,
                meta.round if meta else None,
                base_version,
                during,
                outcome.reason,
                outcome.detail,
            )
        )
        self.observers.update_seen(
            UpdateSeen(participant, False, outcome.reason, base_version, size=size)
        )
