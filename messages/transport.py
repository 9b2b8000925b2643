"""The one small interface both transports implement: AMQP 0-9-1's model, nothing more.

Exchanges (direct, fanout, topic, and the default exchange ``""`` that routes to the queue
named by the routing key), durable queues with RabbitMQ's arguments, bindings, confirmed
publishing and manually acknowledged consumption. :mod:`fedq.messages.topology` builds
fedq's fixed names on top of it; ``tests/test_transport_contract.py`` pins the semantics
both implementations must share.

Invariants every transport keeps:
- ``publish`` returns only once the broker has taken responsibility for the message.
- A delivery not acked when its consumer closes is delivered again, with ``redelivered``.
- A consumer has at most ``prefetch`` deliveries unacked and not released at a time.
- A queue with ``x-max-length`` and ``x-overflow: drop-head`` keeps only its newest ready
  messages.
- A queue with ``x-max-length`` or ``x-max-length-bytes`` and ``x-overflow:
  reject-publish`` refuses a message that would take it past its limit: ``publish``
  raises QueueFull and the queue keeps what it had.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

ExchangeKind = Literal["direct", "fanout", "topic"]


class TransportError(RuntimeError):
    """The broker refused or could not do what was asked."""


class Unroutable(TransportError):
    """A mandatory message matched no queue."""


class Inequivalent(TransportError):
    """A queue or exchange exists with other arguments or kind than declared (RabbitMQ's
    PRECONDITION_FAILED): declaring never changes what exists."""


class QueueDeleted(TransportError):
    """The queue being consumed was deleted on the broker (``fedq teardown --force``, an
    operator): nothing more can arrive, so the consumer stops rather than wait forever."""


class Locked(TransportError):
    """Another connection holds the lock asked for (:meth:`Transport.hold`)."""


class LockLost(TransportError):
    """A lock this connection held was taken by another while the connection was down."""


class QueueFull(TransportError):
    """A queue at its limit with ``x-overflow: reject-publish`` refused the message (the
    broker's basic.nack): nothing of it was kept; publish it again later."""


class Delivery(Protocol):
    """A received message. Ack only after its effect is durable."""

    @property
    def body(self) -> bytes: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def routing_key(self) -> str:
        """The key it was published with (not the queue's name, unless sent to the
        default exchange). On a topic exchange whose keys the broker's topic permissions
        bind to a user, it says who sent it as much as ``user_id`` does."""

    @property
    def headers(self) -> Mapping[str, Any]: ...
    @property
    def redelivered(self) -> bool: ...
    @property
    def undecodable(self) -> str | None:
        """Why the client could not decode this message's properties (they are then
        all unknown: no id, type, user or headers), or None. Such a delivery is settled
        like any other, never left to be redelivered (see :mod:`fedq.messages.frames`)."""

    def release_body(self) -> None:
        """Drop this process's reference to the body; ack and nack still work, and the
        delivery no longer counts toward its consumer's prefetch.

        The coordinator holds incorporated deliveries until the commit; releasing their
        bodies keeps its memory O(model size) rather than O(quorum x model size), and a small
        prefetch keeps only a few bodies in flight however many it holds.
        """

    async def ack(self) -> None: ...
    async def nack(self, *, requeue: bool) -> None: ...


class Transport(abc.ABC):
    """A connection to a broker. Use as ``async with``; one per process and identity."""

    #: The authenticated user: set as ``user_id`` on every message this transport publishes
    #: (None: unknown, as with a client certificate whose user the URL does not name).
    identity: str | None

    async def __aenter__(self) -> Transport:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def declare_exchange(self, name: str, kind: ExchangeKind) -> None:
        """Declare a durable exchange; idempotent."""

    @abc.abstractmethod
    async def declare_queue(
        self,
        name: str,
        *,
        durable: bool = True,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare a queue; idempotent for equal arguments, TransportError otherwise.
        ``exclusive``: this connection's alone, consumed on it only (not with
        ``consumers_apart``), and deleted by the broker when the connection closes or is
        lost, however this process ends: Locked for any other connection."""

    @abc.abstractmethod
    async def bind(self, queue: str, exchange: str, routing_key: str = "") -> None: ...

    @abc.abstractmethod
    async def delete_queue(self, name: str) -> None:
        """Delete ``name`` and its messages; a missing queue is no error."""

    @abc.abstractmethod
    async def delete_exchange(self, name: str) -> None: ...

    @abc.abstractmethod
    async def queue_depth(self, name: str) -> int:
        """Ready (not yet delivered) messages in ``name``."""

    @abc.abstractmethod
    async def queue_consumers(self, name: str) -> int:
        """Consumers attached to ``name`` now (a running coordinator consumes its updates)."""

    @abc.abstractmethod
    async def hold(self, name: str) -> None:
        """Hold the lock ``name`` for as long as this connection lives: an exclusive queue,
        which the broker grants one connection at a time and deletes when that connection
        closes, however it closes (a killed process's TCP connection included). Raises
        Locked while another connection holds it. Held again after a reconnect; if another
        took it meanwhile, :meth:`held_lost` says so."""

    @abc.abstractmethod
    async def release(self, name: str) -> None:
        """Let go of the lock ``name`` if this connection holds it (else nothing), without
        closing the connection: a coordinator that stops leaves its transport usable."""

    @abc.abstractmethod
    async def held_lost(self) -> None:
        """Wait until a lock this connection held is lost (raises LockLost); never returns
        otherwise. Run it beside the work the lock protects."""

    @abc.abstractmethod
    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None = None,
        type: str | None = None,
        headers: Mapping[str, Any] | None = None,
        mandatory: bool = False,
    ) -> None:
        """Publish a persistent message and wait for the broker's confirm.

        Raises Unroutable if ``mandatory`` and no queue took it.
        """

    @abc.abstractmethod
    def consume(
        self, queue: str, *, prefetch: int
    ) -> AbstractAsyncContextManager[AsyncIterator[Delivery]]:
        """Deliveries from ``queue``, at most ``prefetch`` unacked at a time, not counting
        released ones (``Delivery.release_body``).

        Leaving the context requeues every delivery not yet acked; settling one of them
        afterwards raises TransportError.
        """
