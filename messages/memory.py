"""The embedded broker: AMQP semantics in one process, for ``fedq simulate`` without RabbitMQ.

It passes the same contract tests as :class:`~fedq.messages.amqp.AmqpTransport`. It keeps
nothing on disk: a process crash loses every message, which is why it is a default for
single-machine runs only. Bodies are shared, never copied: a fanout stores one body once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fedq.messages.transport import (
    Delivery,
    ExchangeKind,
    Inequivalent,
    Locked,
    QueueDeleted,
    QueueFull,
    Transport,
    TransportError,
    Unroutable,
)


@dataclass(slots=True)
class _Message:
    body: bytes
    message_id: str | None
    type: str | None
    user_id: str | None
    headers: Mapping[str, Any]
    routing_key: str = ""
    redelivered: bool = False


class _MemoryDelivery:
    __slots__ = ("_consumer", "_done", "_msg", "_released")

    def __init__(self, consumer: _Consumer, msg: _Message) -> None:
        self._consumer = consumer
        self._msg = msg
        self._done = False
        self._released = False

    body = property(lambda self: self._msg.body)
    message_id = property(lambda self: self._msg.message_id)
    type = property(lambda self: self._msg.type)
    user_id = property(lambda self: self._msg.user_id)
    routing_key = property(lambda self: self._msg.routing_key)
    headers = property(lambda self: self._msg.headers)
    redelivered = property(lambda self: self._msg.redelivered)
    #: Messages in memory are never encoded, so never undecodable.
    undecodable = None

    def release_body(self) -> None:
        """Nothing to free: like RabbitMQ, the embedded broker keeps the message until it
        is acked (it may have to deliver it again). It stops counting toward the prefetch."""
        if not (self._released or self._done or self._consumer.closed):
            self._released = True
            self._consumer.released += 1
            self._consumer.queue.dispatch()

    def _settle(self) -> None:
        if self._done:
            raise TransportError("delivery already acknowledged")
        if self._consumer.closed:
            raise TransportError("consumer closed: the delivery was requeued")
        self._done = True
        self._consumer.released -= self._released
        self._consumer.unacked.pop(self, None)

    async def ack(self) -> None:
        self._settle()
        self._consumer.queue.dispatch()

    async def nack(self, *, requeue: bool) -> None:
        self._settle()
        if requeue:
            self._msg.redelivered = True
            self._consumer.queue.ready.appendleft(self._msg)
        self._consumer.queue.dispatch()


@dataclass(eq=False)
class _Consumer:
    queue: _Queue
    prefetch: int
    #: None, last: the queue was deleted.
    inbox: asyncio.Queue[_MemoryDelivery | None] = field(default_factory=asyncio.Queue)
    unacked: dict[_MemoryDelivery, None] = field(default_factory=dict)  # delivery order
    #: Unacked deliveries whose body was released: they do not count toward the prefetch.
    released: int = 0
    closed: bool = False


@dataclass(eq=False)
class _Queue:
    name: str
    durable: bool
    arguments: dict[str, Any]
    #: The transport an exclusive queue belongs to, None for a shared one.
    owner: MemoryTransport | None = None
    ready: deque[_Message] = field(default_factory=deque)
    consumers: list[_Consumer] = field(default_factory=list)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def refuses(self, msg: _Message) -> bool:
        """Would ``msg`` take a reject-publish queue past its limit?"""
        if self.arguments.get("x-overflow") != "reject-publish":
            return False
        limit = self.arguments.get("x-max-length")
        byte_limit = self.arguments.get("x-max-length-bytes")
        held = sum(len(m.body) for m in self.ready)
        return (limit is not None and len(self.ready) >= int(limit)) or (
            byte_limit is not None and held + len(msg.body) > int(byte_limit)
        )

    def put(self, msg: _Message) -> None:
        self.ready.append(msg)
        limit = self.arguments.get("x-max-length")
        if limit is not None:
            while len(self.ready) > int(limit):
                self.ready.popleft()  # drop-head: the oldest ready message goes
        byte_limit = self.arguments.get("x-max-length-bytes")
        if byte_limit is not None:
            held = sum(len(m.body) for m in self.ready)
            while held > int(byte_limit):
                held -= len(self.ready.popleft().body)
        self.dispatch()

    def dispatch(self) -> None:
        while self.ready:
            open_ = [c for c in self.consumers if len(c.unacked) - c.released < c.prefetch]
            if not open_:
                return
            consumer = open_[next(self._turn) % len(open_)]
            delivery = _MemoryDelivery(consumer, self.ready.popleft())
            consumer.unacked[delivery] = None
            consumer.inbox.put_nowait(delivery)

    def detach(self, consumer: _Consumer) -> None:
        consumer.closed = True
        self.consumers.remove(consumer)
        for delivery in reversed(consumer.unacked):  # keep their order at the head
            delivery._msg.redelivered = True
            self.ready.appendleft(delivery._msg)
        consumer.unacked.clear()
        self.dispatch()


def _topic_matches(pattern: str, key: str) -> bool:
    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


class _Inbox:
    """Deliveries of one consumer; a cancelled ``__anext__`` loses nothing and ends nothing."""

    def __init__(self, consumer: _Consumer) -> None:
        self._consumer = consumer

    def __aiter__(self) -> _Inbox:
        return self

    async def __anext__(self) -> Delivery:
        delivery = await self._consumer.inbox.get()
        if delivery is None:
            self._consumer.inbox.put_nowait(None)  # every later call ends the same way
            raise QueueDeleted(f"the queue {self._consumer.queue.name} was deleted")
        return delivery


class MemoryBroker:
    """The shared state of one embedded broker; give each process role its own transport."""

    def __init__(self) -> None:
        self.exchanges: dict[str, ExchangeKind] = {}
        self.bindings: dict[str, list[tuple[str, str]]] = {}
        self.queues: dict[str, _Queue] = {}
        #: Locks (Transport.hold) and the transport holding each.
        self.locks: dict[str, MemoryTransport] = {}

    def route(self, exchange: str, routing_key: str) -> list[_Queue]:
        if exchange == "":
            queue = self.queues.get(routing_key)
            return [queue] if queue else []
        kind = self.exchanges.get(exchange)
        if kind is None:
            raise TransportError(f"no exchange {exchange!r}")
        names: list[str] = []
        for bound, key in self.bindings.get(exchange, []):
            hit = (
                kind == "fanout"
                or (kind == "direct" and key == routing_key)
                or (kind == "topic" and _topic_matches(key, routing_key))
            )
            if hit and bound not in names:
                names.append(bound)
        return [self.queues[n] for n in names if n in self.queues]


class MemoryTransport(Transport):
    def __init__(self, broker: MemoryBroker, identity: str = "embedded") -> None:
        self.broker = broker
        self.identity = identity

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        for name in [n for n, holder in self.broker.locks.items() if holder is self]:
            del self.broker.locks[name]
        for name in [n for n, q in self.broker.queues.items() if q.owner is self]:
            await self.delete_queue(name)

    async def hold(self, name: str) -> None:
        holder = self.broker.locks.setdefault(name, self)
        if holder is not self:
            raise Locked(f"lock {name!r} is held by another connection")

    async def release(self, name: str) -> None:
        if self.broker.locks.get(name) is self:
            del self.broker.locks[name]

    async def held_lost(self) -> None:
        await asyncio.Event().wait()  # one process, no outage: a lock is never lost

    async def declare_exchange(self, name: str, kind: ExchangeKind) -> None:
        known = self.broker.exchanges.setdefault(name, kind)
        if known != kind:
            raise Inequivalent(f"exchange {name!r} exists as {known}, not {kind}")

    async def declare_queue(
        self,
        name: str,
        *,
        durable: bool = True,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        args = dict(arguments or {})
        queue = self.broker.queues.get(name)
        if queue is None:
            self.broker.queues[name] = _Queue(name, durable, args, self if exclusive else None)
            return
        self._check_owner(queue)
        if queue.arguments != args or queue.durable != durable or exclusive != bool(queue.owner):
            raise Inequivalent(f"queue {name!r} exists with other arguments {queue.arguments}")

    def _check_owner(self, queue: _Queue) -> None:
        """Locked if ``queue`` is exclusive to another transport (RESOURCE_LOCKED)."""
        if queue.owner not in (None, self):
            raise Locked(f"queue {queue.name!r} is exclusive to another connection")

    async def bind(self, queue: str, exchange: str, routing_key: str = "") -> None:
        if queue not in self.broker.queues or exchange not in self.broker.exchanges:
            raise TransportError(f"cannot bind {queue!r} to {exchange!r}: declare both first")
        binding = (queue, routing_key)
        bindings = self.broker.bindings.setdefault(exchange, [])
        if binding not in bindings:
            bindings.append(binding)

    async def delete_queue(self, name: str) -> None:
        queue = self.broker.queues.pop(name, None)
        if queue is not None:
            for consumer in list(queue.consumers):
                consumer.closed = True
                consumer.inbox.put_nowait(None)
        for bindings in self.broker.bindings.values():
            bindings[:] = [b for b in bindings if b[0] != name]

    async def delete_exchange(self, name: str) -> None:
        self.broker.exchanges.pop(name, None)
        self.broker.bindings.pop(name, None)

    async def queue_depth(self, name: str) -> int:
        queue = self.broker.queues.get(name)
        if queue is None:
            raise TransportError(f"no queue {name!r}")
        return len(queue.ready)

    async def queue_consumers(self, name: str) -> int:
        queue = self.broker.queues.get(name)
        if queue is None:
            raise TransportError(f"no queue {name!r}")
        return len(queue.consumers)

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
        queues = self.broker.route(exchange, routing_key)
        if not queues and mandatory:
            raise Unroutable(f"no queue bound to {exchange!r} for {routing_key!r}")

        def message() -> _Message:  # one each: a delivery's flags are its queue's
            return _Message(
                bytes(body), message_id, type, self.identity, dict(headers or {}), routing_key
            )

        if full := [q.name for q in queues if q.refuses(message())]:
            raise QueueFull(f"queue {full[0]!r} is full and refuses new messages")
        for queue in queues:
            queue.put(message())
        await asyncio.sleep(0)  # a publish is a scheduling point, as on a real socket

    @asynccontextmanager
    async def consume(self, queue: str, *, prefetch: int) -> AsyncIterator[AsyncIterator[Delivery]]:
        target = self.broker.queues.get(queue)
        if target is None:
            raise TransportError(f"no queue {queue!r}")
        self._check_owner(target)
        consumer = _Consumer(target, max(1, prefetch))
        target.consumers.append(consumer)
        target.dispatch()

        try:
            yield _Inbox(consumer)
        finally:
            if not consumer.closed:
                target.detach(consumer)
