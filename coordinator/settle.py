"""Settling what is not folded: a refusal or a duplicate leaves the coordinator's hands at
once, and is never lost.

In this order: a refused body is copied to the dead-letter queue (``fedq.F.rejected``)
with its reason in ``x-fedq-reason``; the delivery is acked; the ledger records it (once
per update, whatever its chunks); the observers hear of it. A crash between the copy and
the ack leaves the delivery on the broker, which settles it again: the dead-letter queue
may hold a copy twice, the ledger never loses one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from fedq.coordinator.assembly import Stream
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.observers import Observers, UpdateSeen
from fedq.coordinator.verdicts import Outcome, Refused, Rejection, Settled
from fedq.messages.topology import Topology
from fedq.messages.transport import Delivery, Transport, TransportError

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


class Settler:
    def __init__(
        self,
        transport: Transport,
        topology: Topology,
        ledger: UpdateLedger,
        observers: Observers,
    ) -> None:
        self.transport = transport
        self.topology = topology
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
            await self._dead_letter(delivery, delivery.body, outcome)
        await self._ack(delivery)
        size = len(delivery.body) if size is None else size
        await self._record(outcome, delivery.message_id, during, size)

    async def settle_stream(self, stream: Stream, rejection: Rejection, during: int) -> None:
        """A refused chunked update: each chunk that came goes to the dead-letter queue as
        it came (read back from the spool) with the reason, and is acked; the ledger
        records the update's refusal once."""
        outcome = Refused(rejection, stream.meta).outcome()
        for index in sorted(stream.chunks):
            delivery = stream.chunks[index].delivery
            body = await asyncio.to_thread(stream.read, index)
            await self._dead_letter(delivery, body, outcome)
            await self._ack(delivery)
        stream.close()
        await self._record(outcome, stream.update_id, during, stream.size)

    async def _dead_letter(self, delivery: Delivery, body: bytes, outcome: Outcome) -> None:
        """A copy of ``body`` (what ``delivery`` brought) to the dead-letter queue."""
        headers = dead_letter_headers(delivery.headers, outcome)
        await self.transport.publish(
            "",
            self.topology.rejected,
            body,
            message_id=delivery.message_id,
            type=delivery.type,
            headers=headers,
        )
        log.info("rejected update: %s", headers[REASON_HEADER])

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
