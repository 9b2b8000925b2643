"""fedq's broker topology: the fixed names of docs/wire-protocol.md, declared idempotently.

For federation ``F`` every name starts with ``fedq.F.``. Operators rely on these names
(dashboards, permissions in ``deploy/``), so they change only with a new schema version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from fedq.messages.transport import Inequivalent, Transport, TransportError

#: Routing key on ``fedq.F.updates`` (a direct exchange with one queue of the same name).
UPDATE_KEY = "update"
#: Routing keys on ``fedq.F.control``.
ROUND_OPEN = "round.open"
ROUND_CLOSED = "round.closed"
VERSION_PROGRESS = "version.progress"
FEDERATION_DONE = "federation.done"

log = logging.getLogger("fedq.topology")


def participant_key(kind: str, participant: str) -> str:
    """``join.<p>``, ``heartbeat.<p>`` or ``leave.<p>``."""
    return f"{kind}.{participant}"


UpdatesQueueType = Literal["classic", "quorum"]


#: The updates queue's byte limit unless configured (coordinator --updates-queue-bytes).
DEFAULT_UPDATES_QUEUE_BYTES = 1 << 30
#: The dead-letter queue's byte limit unless configured (coordinator --dead-letter-bytes).
DEFAULT_DEAD_LETTER_BYTES = 256 << 20
#: The dead-letter queue holds at most one message per this many bytes of its byte limit
#: (and at least MIN_DEAD_LETTER_MESSAGES). RabbitMQ's byte limit counts bodies only, and a
#: copy of an empty body still stores its headers and properties: at most about 11 KiB
#: (the reason, 1,024 characters, and six kept headers of 256, 4 bytes a character at
#: most in UTF-8; a message id and a type of 255 bytes). So what the DLQ stores besides
#: its bodies is at most its byte limit again, however small the bodies.
DEAD_LETTER_BYTES_PER_MESSAGE = 16 << 10
MIN_DEAD_LETTER_MESSAGES = 64


def dead_letter_messages(max_bytes: int) -> int:
    """The dead-letter queue's message limit for a byte limit of ``max_bytes``."""
    return max(MIN_DEAD_LETTER_MESSAGES, max_bytes // DEAD_LETTER_BYTES_PER_MESSAGE)


#: Deliveries of one message a quorum queue makes before it dead-letters it instead
#: (``x-delivery-limit``): the last line against a message that takes down whoever
#: consumes it (a connection, the process), which would otherwise come back after every
#: reconnect or restart, forever. Every return counts: a channel closed with the message
#: unacked (a broker restart, a coordinator killed) and a held update given back before
#: ``consumer_timeout`` (every half of it: 15 minutes by default). So 64 lets an honest
#: update be held through one version open some 16 hours, or 63 restarts, before the
#: broker moves it to the dead-letter queue (where ``fedq audit`` finds it missing).
DELIVERY_LIMIT = 64


@dataclass(frozen=True)
class Topology:
    federation: str
    #: ``quorum`` (the default) replicates the updates queue across a cluster (Raft), and
    #: measured no slower than ``classic`` on one node (bench/round_overhead.py
    #: --updates-queue). Its dead-lettering is made at-least-once, which RabbitMQ allows
    #: only with ``x-overflow: reject-publish``.
    updates_queue_type: UpdatesQueueType = "quorum"
    #: The updates queue's byte limit: past it RabbitMQ refuses new updates (basic.nack),
    #: which senders publish again later; a flood fills the queue, never the broker's disk.
    updates_max_bytes: int | None = DEFAULT_UPDATES_QUEUE_BYTES
    #: The dead-letter queue's byte limit (bodies), with ``x-overflow: reject-publish``:
    #: once full, RabbitMQ refuses new copies and keeps the evidence it has (drop-head
    #: would let a flood push out the first evidence). The DLQ is a classic queue, whatever
    #: the updates queue's type: a classic queue refuses the message that would pass its
    #: limit, while a quorum queue refuses only once it is over it (measured: one message
    #: over); and a refusal waits for its copy's confirm, which a quorum queue gives later
    #: (a Raft commit: about twice as long per copy, measured on a loaded machine).
    #: The ledger, not the DLQ, is the record of every refusal.
    dead_letter_max_bytes: int = DEFAULT_DEAD_LETTER_BYTES

    @property
    def prefix(self) -> str:
        return f"fedq.{self.federation}"

    @property
    def updates(self) -> str:
        """Exchange and durable queue: participants -> coordinator."""
        return f"{self.prefix}.updates"

    @property
    def models(self) -> str:
        """Fanout exchange: coordinator -> every participant's model queue."""
        return f"{self.prefix}.models"

    @property
    def control(self) -> str:
        """Topic exchange: round and membership events, both ways."""
        return f"{self.prefix}.control"

    @property
    def coordinator(self) -> str:
        """The coordinator's queue of join/heartbeat/leave events."""
        return f"{self.prefix}.coordinator"

    @property
    def lock(self) -> str:
        """The active coordinator's lock (Transport.hold): an exclusive queue, held for as
        long as its connection lives, so one coordinator runs a federation at a time,
        whatever host and state dir each was started with."""
        return f"{self.prefix}.coordinator.lock"

    @property
    def rejected(self) -> str:
        """Dead-letter queue: every rejected update, body intact, with ``x-fedq-reason``."""
        return f"{self.prefix}.rejected"

    def model_queue(self, participant: str) -> str:
        """A participant's queue: the newest model only, plus ``federation.done``."""
        return f"{self.prefix}.model.{participant}"

    def updates_arguments(self) -> dict[str, str | int]:
        arguments: dict[str, str | int] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.rejected,
            "x-overflow": "reject-publish",
        }
        if self.updates_max_bytes is not None:
            arguments["x-max-length-bytes"] = self.updates_max_bytes
        if self.updates_queue_type == "quorum":
            arguments |= {
                "x-queue-type": "quorum",
                "x-dead-letter-strategy": "at-least-once",
                "x-delivery-limit": DELIVERY_LIMIT,
            }
        return arguments

    def rejected_arguments(self) -> dict[str, str | int]:
        """The dead-letter queue's bounds: bytes, messages, and reject-publish."""
        return {
            "x-max-length-bytes": self.dead_letter_max_bytes,
            "x-max-length": dead_letter_messages(self.dead_letter_max_bytes),
            "x-overflow": "reject-publish",
        }

    def coordinator_arguments(self) -> dict[str, str | int]:
        """The control queue: a quorum queue, for its delivery limit (a control message
        that took its consumer down is dead-lettered after DELIVERY_LIMIT tries)."""
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.rejected,
        }

    async def declare_core(self, transport: Transport) -> None:
        """Everything the coordinator owns. Safe to run any number of times. A queue that
        exists with other arguments (made by an older fedq, or with other limits) is
        :class:`Inequivalent`, with what to do."""
        await transport.declare_exchange(self.updates, "direct")
        await transport.declare_exchange(self.models, "fanout")
        await transport.declare_exchange(self.control, "topic")
        await self._declare_evidence(transport)
        await _declare_upgrading(transport, self.updates, self.updates_arguments(), keep=True)
        await transport.bind(self.updates, self.updates, UPDATE_KEY)
        await _declare_upgrading(
            transport, self.coordinator, self.coordinator_arguments(), keep=False
        )
        for kind in ("join", "heartbeat", "leave"):
            await transport.bind(self.coordinator, self.control, f"{kind}.*")

    async def _declare_evidence(self, transport: Transport) -> None:
        """The dead-letter queue with its bounds. One an earlier fedq declared without them
        (or with other limits) the broker refuses to redeclare: it may hold evidence, so it
        is never deleted here, and the coordinator stops with what to do."""
        arguments = self.rejected_arguments()
        try:
            await transport.declare_queue(self.rejected, arguments=arguments)
        except Inequivalent as exc:
            raise Inequivalent(
                f"queue {self.rejected} exists with other arguments than this coordinator "
                f"declares ({', '.join(f'{k}={v}' for k, v in arguments.items())}): it was "
                "made by an older fedq or with other limits, and RabbitMQ never changes a "
                "queue. Take out what it holds, delete it (rabbitmqctl -p <vhost> "
                f"delete_queue {self.rejected}), then start again. The broker said: {exc}"
            ) from None

    async def declare_participant(
        self, transport: Transport, participant: str, max_bytes: int | None = None
    ) -> None:
        """A participant's model queue. ``x-max-length: 1`` with drop-head means a slow
        participant only ever finds the newest model; the broker stores each body once.
        A model that comes in chunks needs room for all of them: ``max_bytes`` then bounds
        the queue by bytes instead (``x-max-length-bytes``), the oldest chunks dropped.

        The exchanges are the coordinator's (:meth:`declare_core`): a participant declares
        none, so it needs no ``configure`` permission on them (which would let it delete
        them), only on its own queue. Before the coordinator has declared them the bind
        fails (TransportError): the participant tries again later."""
        queue = self.model_queue(participant)
        bound = {"x-max-length": 1} if max_bytes is None else {"x-max-length-bytes": max_bytes}
        await transport.declare_queue(queue, arguments={**bound, "x-overflow": "drop-head"})
        await transport.bind(queue, self.models)
        await transport.bind(queue, self.control, FEDERATION_DONE)

    async def tidy(self, transport: Transport) -> list[str]:
        """After a finished run whose participants are gone: remove the coordinator's queue,
        the exchanges, and the updates and dead-letter queues unless they hold messages,
        which stay for inspection. Returns the queues kept."""
        # A depth check, not ``if-empty``: quorum queues refuse that flag (NOT_IMPLEMENTED).
        kept = [q for q in (self.updates, self.rejected) if await transport.queue_depth(q) > 0]
        for queue in {self.updates, self.rejected} - set(kept):
            await transport.delete_queue(queue)
        await transport.delete_queue(self.coordinator)
        for exchange in (self.models, self.control):
            await transport.delete_exchange(exchange)
        if self.updates not in kept:
            await transport.delete_exchange(self.updates)
        return kept

    async def delete(self, transport: Transport, participants: list[str]) -> None:
        """Remove every queue and exchange of this federation (tests, `fedq` teardown)."""
        for queue in [self.updates, self.rejected, self.coordinator] + [
            self.model_queue(p) for p in participants
        ]:
            await transport.delete_queue(queue)
        for exchange in (self.updates, self.models, self.control):
            await transport.delete_exchange(exchange)


async def _declare_upgrading(
    transport: Transport, queue: str, arguments: dict[str, str | int], *, keep: bool
) -> None:
    """Declare ``queue``; one an earlier fedq declared with other arguments (before the
    delivery limit, or the control queue as a classic queue) the broker refuses to
    redeclare (PRECONDITION_FAILED). ``keep`` (it may hold updates): it is used as it is,
    without the limit, and said once. Else (it holds only control events, which
    participants send again): it is deleted and declared anew."""
    try:
        await transport.declare_queue(queue, arguments=arguments)
        return
    except Inequivalent as exc:
        declared_before = exc
    if not keep:
        log.info("%s was declared by an earlier fedq: declaring it anew", queue)
        await transport.delete_queue(queue)
        await transport.declare_queue(queue, arguments=arguments)
        return
    without = {k: v for k, v in arguments.items() if k != "x-delivery-limit"}
    try:
        await transport.declare_queue(queue, arguments=without)
    except TransportError:
        raise declared_before from None
    log.warning(
        "%s was declared by an earlier fedq, without a delivery limit: a message that "
        "takes its consumer down would come back forever. Once it is empty, delete it "
        "(fedq teardown) or set the policy delivery-limit=%d on it",
        queue,
        DELIVERY_LIMIT,
    )
