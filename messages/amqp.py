"""RabbitMQ through aio-pika: one robust connection, a channel per purpose.

When the broker restarts or the network drops, the robust connection reconnects (every
second) and restores channels, queues and consumers; a publish caught in the outage is
retried until it is confirmed (up to ``outage_seconds``), so delivery is at-least-once and
consumers dedupe by ``message_id``; so are declarations, deletions and queue counts (all
idempotent), and stopping a consumer whose connection goes down meanwhile is done. Acks
of deliveries from before the outage fail with TransportError: the broker has already
requeued those messages.

Channels (one connection may open at most the broker's ``channel_max``, 2047 by default;
one more and the broker closes the whole connection, every consumer on it included):
- one for publishing, with publisher confirms (``publish`` returns after the broker's ack)
  and persistent delivery, shared by every publisher of the process;
- a pool of up to ``DECLARING_CHANNELS`` for declarations, deletions and queue counts,
  each doing one operation at a time: a PRECONDITION_FAILED (same name, other arguments)
  closes only that channel and surfaces as one TransportError. A pool, not one channel per
  operation nor a single shared one: 1,000 virtual participants starting together declare
  5,000 things, which would open as many channels at once, or wait in one line behind a
  busy connection;
- one per ``consume``, with its own prefetch, so closing it requeues exactly that
  consumer's unacked deliveries. M virtual participants in one process therefore take
  M + 1 + ``DECLARING_CHANNELS`` channels of one connection at most; a ``consume`` beyond
  what the broker allows is refused with a TransportError saying so.

The connection is named (``connection_name``, shown by the management UI and API) after
the process, ``fedq pid <pid>``, unless told otherwise.

With ``consumers_apart`` (the coordinator's transport) each consumer's channel is on a
connection of its own, named after the process and the queue: whatever takes one
connection down then stops only that consumer, until its robust connection is back. And
the client never takes a connection down over a message whose properties it cannot
decode (:mod:`fedq.messages.frames`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import aio_pika
import aiormq
import yarl
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from fedq.messages.body_frames import install as copy_bodies_once_each_way
from fedq.messages.channel_closing import RobustConnection
from fedq.messages.channel_closing import install as answer_every_channel_close
from fedq.messages.frames import UNDECODABLE_HEADER
from fedq.messages.frames import install as tolerate_undecodable_properties
from fedq.messages.read_pause import WAITING_PAUSE, DeliverFrames, PausableReads
from fedq.messages.transport import (
    Delivery,
    ExchangeKind,
    Inequivalent,
    Locked,
    LockLost,
    QueueDeleted,
    QueueFull,
    Transport,
    TransportError,
    Unroutable,
)

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: The most letting go of a lock may take (Transport.release).
RELEASE_SECONDS = 5.0

T = TypeVar("T")

#: Declarations, deletions and queue counts that may run at once, each on its own channel.
DECLARING_CHANNELS = 16
#: How long a consumer's channel may take to give back its unsettled deliveries
#: (basic.recover) when the consumer closes; past it (a connection going down), the
#: channel is closed instead, which gives them back as well.
RECOVER_SECONDS = 5.0

log = logging.getLogger("fedq.amqp")

# Before any connection: a message whose properties the client cannot decode must not
# take a connection down (see fedq.messages.frames).
tolerate_undecodable_properties()
# And a channel the broker closes must be answered before its number is used again (see
# fedq.messages.channel_closing).
answer_every_channel_close()
# And a body goes from frames to bytes and back with the fewest copies, never through a
# buffer that grows (see fedq.messages.body_frames).
copy_bodies_once_each_way()


#: What a broker restart or a network cut raises while the robust connection reconnects.
_CONNECTION_LOST = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)


def _being_cancelled() -> bool:
    """True when this task itself is being cancelled (not a future aiormq cancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class ConnectionLost(TransportError):
    """The broker stayed unreachable for longer than the transport rides out."""


class BrokerUnavailable(TransportError):
    """The broker could not be reached or refused the login; the message says what to do."""


def redact(url: str) -> str:
    """The URL without its password, for messages a user will see."""
    try:
        parsed = yarl.URL(url)
    except (ValueError, TypeError):
        return "<unparseable URL>"
    return str(parsed.with_password("***")) if parsed.password else str(parsed)


def _cannot_connect(where: str, exc: BaseException) -> str:
    """One line on why a connection failed and what to do; TLS, name resolution and a
    vhost the broker will not open are named (the client wraps them in its own errors)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            host = yarl.URL(where).host
            return (
                f"cannot resolve the host {host!r} of the broker URL {where} "
                f"({cause.strerror}): check the host in --broker / FEDQ_BROKER_URL"
            )
        if isinstance(cause, aiormq.exceptions.InvalidFrameError) and "OpenOk" in str(cause):
            # The broker answered the login, then refused to open the URL's vhost.
            vhost = yarl.URL(where).path[1:] or "/"
            return (
                f"RabbitMQ at {where} would not open the vhost {vhost!r}: it does not exist "
                "or the user has no permissions on it (rabbitmqctl add_vhost / "
                "set_permissions), or fix the vhost in the URL's path"
            )
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"TLS to RabbitMQ at {where}: its certificate did not verify "
                f"({cause.verify_message}): pass the CA that signed it as ?cafile=PATH"
            )
        if isinstance(cause, ssl.SSLError):
            return (
                f"TLS to RabbitMQ at {where} failed ({cause.reason or cause}): check the URL's "
                "cafile, certfile and keyfile, and that the port is the broker's TLS listener"
            )
        cause = cause.__cause__ or cause.__context__
    return (
        f"cannot reach RabbitMQ at {where} ({exc.__class__.__name__}): start it "
        "(`rabbitmq-server -detached`) or pass the right --broker / FEDQ_BROKER_URL"
    )


class _AmqpDelivery:
    __slots__ = ("_body", "_inbox", "_msg", "_released", "_shared", "_unreleased")

    def __init__(self, msg: AbstractIncomingMessage, inbox: _Inbox) -> None:
        self._msg = msg
        self._inbox = inbox
        self._released = False
        #: Until its body is released or it is settled: one of the inbox's bodies in hand.
        self._unreleased = True
        self._body, self._shared = inbox.bodies.take(msg)
        # This wrapper becomes the body's only holder, so release_body() really frees it.
        cast(aio_pika.IncomingMessage, msg).body = b""

    @property
    def body(self) -> bytes:
        return self._body

    def _let_go(self) -> None:
        if self._shared is not None:
            self._inbox.bodies.drop(self._shared)
            self._shared = None
        if self._unreleased:
            self._unreleased = False
            self._inbox.let_go()

    def release_body(self) -> None:
        self._body = b""
        self._let_go()
        if not self._released:
            self._released = True
            self._inbox.released(self._msg.consumer_tag)

    message_id = property(lambda self: self._msg.message_id)
    type = property(lambda self: self._msg.type)
    user_id = property(lambda self: self._msg.user_id)
    routing_key = property(lambda self: self._msg.routing_key or "")
    redelivered = property(lambda self: bool(self._msg.redelivered))

    @property
    def undecodable(self) -> str | None:
        failure = (self._msg.headers or {}).get(UNDECODABLE_HEADER)
        return failure if isinstance(failure, str) else None

    @property
    def headers(self) -> Mapping[str, Any]:
        return self._msg.headers or {}

    # A closed channel (RuntimeError in aio-pika) means the broker already requeued it.
    _SETTLE_ERRORS = (
        aio_pika.exceptions.MessageProcessError,
        aiormq.exceptions.AMQPError,
        RuntimeError,
    )

    def _settled(self) -> None:
        self._let_go()
        if self._released:
            self._released = False
            self._inbox.settled(self._msg.consumer_tag)

    def _check_open(self, what: str) -> None:
        if self._inbox.closed:
            raise TransportError(f"{what} failed: the consumer closed, the broker requeued it")

    async def ack(self) -> None:
        self._settled()
        self._check_open("ack")
        try:
            await self._msg.ack()
        except self._SETTLE_ERRORS as exc:
            raise TransportError(f"ack failed: {exc}") from exc

    async def nack(self, *, requeue: bool) -> None:
        self._settled()
        self._check_open("nack")
        try:
            await self._msg.nack(requeue=requeue)
        except self._SETTLE_ERRORS as exc:
            raise TransportError(f"nack failed: {exc}") from exc


class _SharedBodies:
    """One bytes object per distinct large body: M virtual participants in one process each
    receive the same model message on their own queue, and keep one copy between them, not
    M. Keyed by (message_id, size) and compared byte for byte before sharing; a body is
    remembered only while a delivery of it still holds it (released or settled ones do
    not), so the coordinator's released update bodies are really freed."""

    #: Smaller bodies (heartbeats, control messages) are not worth a lookup.
    MIN_BYTES = 64 * 1024
    #: At most this many distinct bodies remembered, the oldest forgotten first.
    KEEP = 4

    def __init__(self) -> None:
        #: key -> [body, deliveries holding it]
        self._bodies: dict[tuple[str, int], list[Any]] = {}

    def take(self, msg: AbstractIncomingMessage) -> tuple[bytes, tuple[str, int] | None]:
        """The body to keep for ``msg``, and the key to ``drop`` once it is let go."""
        body = msg.body
        if len(body) < self.MIN_BYTES or not msg.message_id:
            return body, None
        key = (msg.message_id, len(body))
        known = self._bodies.get(key)
        if known is not None and known[0] == body:
            known[1] += 1
            return known[0], key
        self._bodies[key] = [body, 1]
        while len(self._bodies) > self.KEEP:
            del self._bodies[next(iter(self._bodies))]  # the oldest
        return body, key

    def drop(self, key: tuple[str, int]) -> None:
        known = self._bodies.get(key)
        if known is not None:
            known[1] -= 1
            if known[1] <= 0:
                del self._bodies[key]


#: The broker's window for a consumer whose socket reads bound its bodies in hand
#: (:mod:`~fedq.messages.read_pause`): the chunks it can hold unacked before a new consumer
#: takes over (each one's deliveries of a version, at most, in practice).
PACED_WINDOW = 1024

#: The largest prefetch split in two lanes (see :class:`_Inbox`): a small window, as kept
#: by a consumer that holds released deliveries (the coordinator's updates, 4). A larger
#: one (control events, the dashboard) acks as it goes and is never replaced.
MOST_SPLIT = 16


def lanes_of(prefetch: int) -> tuple[int, int]:
    """(each consumer's window, consumers) for a prefetch: two lanes of half the prefetch
    each from 2 to :data:`MOST_SPLIT` (see :class:`_Inbox`), else one of all of it."""
    if 2 <= prefetch <= MOST_SPLIT:
        return prefetch // 2, 2
    return max(1, prefetch), 1


class _Inbox:
    """Deliveries pushed by the broker; a cancelled ``__anext__`` loses nothing and ends nothing.

    (aio-pika's own queue iterator closes itself when a waiting ``__anext__`` is cancelled.)

    Released deliveries (``release_body``) do not count toward the prefetch. The broker counts
    a consumer's unacked deliveries per consumer tag, and applies the channel's prefetch to
    each new consumer: so once every unacked delivery of a consumer is released, a new
    consumer is started on the same channel, with a fresh window, and the old one cancelled.
    Nothing is lost in the switch: deliveries sent to the old tag before its cancel-ok still
    reach this inbox, its unacked ones stay ackable on the channel, and closing the channel
    requeues them all.

    A small window (a prefetch of 2 to :data:`MOST_SPLIT`) is split between two consumers
    (lanes) of ``prefetch // 2`` each, both listed on the queue, so that while one is being
    replaced the other still has room. With a single consumer, every switch left the
    broker nothing to send until the new consumer's consume-ok came back and its first
    body arrived: a coordinator holding the chunks of 40 MB updates (released, 4 to a
    window) waited 7 to 12 ms every 4 chunks, a quarter of a second a round. Two lanes hold
    at most the prefetch, as one did; the round took 0.89x to 0.91x as long as with one
    (``python bench/round_overhead.py --processes --participants 10 --params 10000000
    --rounds 6 --repeat 1 --against REV --pairs 3``;
    bench/README.md, "Where a round's time goes").

    On a connection of its own (``consumers_apart``, the coordinator's) a small prefetch is
    kept another way: the broker's window is :data:`PACED_WINDOW`, and the socket's reads
    pause while the prefetch's bodies are in hand, not released or settled
    (:mod:`~fedq.messages.read_pause`), so a consumer is replaced only after
    :data:`PACED_WINDOW` deliveries held, not every few chunks.
    """

    def __init__(
        self,
        queue: AbstractQueue,
        prefetch: int,
        bodies: _SharedBodies,
        exists: Callable[[], Awaitable[bool]],
        reads: PausableReads | None = None,
    ) -> None:
        self.queue: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        #: Set by a delivery and by the end of this inbox (``_ended``).
        self._wake = asyncio.Event()
        #: The broker cancelled a consumer of this inbox (its queue deleted, or a node of a
        #: cluster lost) since the queue's existence was last asked.
        self._broker_cancelled = False
        self._exists = exists
        #: Asks the broker whether the queue still exists, after it cancelled a consumer.
        self._checker: asyncio.Task[None] | None = None
        #: Once set (QueueDeleted, or what the check met), every later ``__anext__`` raises it.
        self._ended: Exception | None = None
        self.bodies = bodies
        self._source = queue
        #: With ``reads`` (a connection of this consumer's own), the prefetch bounds the
        #: bodies in hand by pausing the socket's reads, and the broker's window is
        #: :data:`PACED_WINDOW`; else the window is the prefetch.
        self._reads = reads
        self._most_in_hand = prefetch
        #: Bodies whose basic.deliver frame was read (:class:`DeliverFrames`) and that
        #: have not reached ``put`` yet: being assembled, or in a consumer callback.
        self._read_ahead = 0
        #: Deliveries put here whose body is neither released nor settled.
        self._in_hand = 0
        #: Whether ``__anext__`` waits for a delivery, none queued (see :meth:`_pace`).
        self._waiting = False
        self.window, lanes = lanes_of(PACED_WINDOW if reads is not None else prefetch)
        if reads is not None:
            reads.holding = self._holding
        #: The consumers taking deliveries (one per lane), oldest first.
        self.tags: list[str] = []
        self._lanes = lanes
        #: Per consumer tag: deliveries released and not yet settled.
        self._held: dict[str | None, int] = {}
        self._full = asyncio.Event()
        self._switcher: asyncio.Task[None] | None = None
        self._stopping = False
        #: Set once the consumer closed: its deliveries were given back to the queue (its
        #: channel closed or recovered), so settling one now would name a delivery tag
        #: the channel no longer knows, which RabbitMQ answers by closing the channel.
        self.closed = False

    async def start(self) -> None:
        for _ in range(self._lanes):
            self.tags.append(await self._source.consume(self.put))
        self._switcher = asyncio.create_task(self._switch_when_full(), name="fedq-consumer-switch")

    async def stop(self, *, cancel: bool) -> None:
        """Stop switching, and cancel the consumers if ``cancel`` (their channel is open).

        The switcher is asked to stop and awaited, not cancelled: cancelled in the middle of
        its basic.consume or basic.cancel, it would leave the channel's RPC unanswered and
        the next RPC on it would time out."""
        self._stopping = True
        self._full.set()
        if self._reads is not None:  # whatever it still counts in hand, it takes no more
            self._reads.resume()
            self._reads = None
        for helper in (self._switcher, self._checker):
            if helper is None:
                continue
            done, _ = await asyncio.wait({helper}, timeout=5.0)
            if not done:  # stuck in an RPC (the connection is down): the channel goes anyway
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
        if cancel:
            for tag in self.tags:
                # The connection may go down with the cancel in flight (a broker restart's
                # CONNECTION_FORCED, as a participant releases its queue to train): the
                # broker then dropped the consumer with the connection and requeued its
                # unacked deliveries, and aio-pika forgot it before sending the cancel, so
                # it is not restored on reconnect either. Nothing is left to stop; raising
                # would end a process that only wanted to stop consuming.
                with contextlib.suppress(*_CONNECTION_LOST):
                    await self._source.cancel(tag)

    async def put(self, message: AbstractIncomingMessage) -> None:
        self.queue.put_nowait(message)
        self._wake.set()
        self._waiting = False  # the waiter has a delivery
        self._read_ahead = max(0, self._read_ahead - 1)
        self._in_hand += 1
        self._pace()

    def let_go(self) -> None:
        """A delivery's body was released, or the delivery settled (whichever came first)."""
        self._in_hand -= 1
        self._pace()

    def _frame_read(self) -> None:
        self._read_ahead += 1
        self._pace()

    def count_frames_of(self, underlay: aiormq.abc.AbstractChannel) -> None:
        """Count the bodies read for ``underlay``, the channel's aiormq channel now (a new
        one after a reconnect: the bodies half read on the old one are gone with it)."""
        frames = getattr(underlay, "frames", None)
        if self._reads is not None and isinstance(frames, DeliverFrames):
            frames.on_deliver = self._frame_read
            self._read_ahead = 0
            self._pace()

    def _holding(self) -> str:
        return (
            f"{self._read_ahead} read and not yet delivered, {self._in_hand} in hand of "
            f"which {self.queue.qsize()} not taken yet"
        )

    def _pace(self) -> None:
        """Pause the socket's reads while more bodies are read or in hand than the
        prefetch (the last one read only in part: its first frames are what paused).

        While the consumer waits for a delivery with none queued, a pause lasts at most
        :data:`~.read_pause.WAITING_PAUSE`: the bodies in hand are then the ones still being
        settled (a refused body's dead-letter copy, its confirm), which let go within
        milliseconds, or ones counted that never reached the consumer or never let go (a
        bug), and the consumer cannot go on without a delivery. A pause that runs out is
        logged with what held it (:meth:`_holding`)."""
        if self._reads is None:
            return
        if self._read_ahead + self._in_hand > self._most_in_hand:
            self._reads.pause()
            if self._waiting:
                self._reads.hurry(WAITING_PAUSE)
        else:
            self._reads.resume()

    def on_broker_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        """aiormq's callback for a basic.cancel the broker sent on this inbox's channel."""
        self._broker_cancelled = True
        if self._checker is None or self._checker.done():
            self._checker = asyncio.get_running_loop().create_task(
                self._check_queue(), name="fedq-queue-check"
            )

    async def _check_queue(self) -> None:
        """Whether the queue still exists, asked after the broker cancelled a consumer: if
        it is gone, this inbox ends with QueueDeleted (aio-pika would otherwise try to
        restore the consumer forever); if it is there, the robust channel restores it.

        This runs in a task of its own, never inside ``__anext__``: a caller's timeout
        cancels ``__anext__`` routinely, and a check cancelled there lost the broker's
        cancel (its flag already cleared), so the next ``__anext__`` waited for a delivery
        that could never come. (That cancellation also reached the declaration on the
        broker and broke the connection; :meth:`AmqpTransport._on_declaring` now lets a
        declaration whose caller left finish on its own.)"""
        try:
            while self._broker_cancelled and self._ended is None and not self._stopping:
                self._broker_cancelled = False
                if not await self._exists():
                    self._ended = QueueDeleted(
                        f"the queue {self._source.name} was deleted on the broker (fedq "
                        "teardown, or an operator): nothing more can arrive"
                    )
        except Exception as exc:  # the broker unreachable for too long, or refusing
            self._ended = exc
        finally:
            self._wake.set()

    def released(self, tag: str | None) -> None:
        self._held[tag] = self._held.get(tag, 0) + 1
        if tag in self.tags and self._held[tag] >= self.window:
            self._full.set()

    def settled(self, tag: str | None) -> None:
        left = self._held.get(tag, 0) - 1
        if left > 0:
            self._held[tag] = left
        else:
            self._held.pop(tag, None)

    async def _switch_when_full(self) -> None:
        while True:
            await self._full.wait()
            self._full.clear()
            if self._stopping:
                return
            full = [tag for tag in self.tags if self._held.get(tag, 0) >= self.window]
            if not full:
                continue  # settled meanwhile: the windows reopened
            old = full[0]
            try:
                new = await self._source.consume(self.put)
            except (*_CONNECTION_LOST, aiormq.exceptions.AMQPError) as exc:
                # Reconnecting: try again shortly (the restored consumers have fresh
                # windows anyway, since the broker requeued every unacked delivery).
                log.warning("could not start a consumer on %s (%s); retrying", self._source, exc)
                await asyncio.sleep(1.0)
                self._full.set()
                continue
            self.tags[self.tags.index(old)] = new
            # A stalled consumer left behind (reconnecting) costs nothing: it is full.
            with contextlib.suppress(*_CONNECTION_LOST, aiormq.exceptions.AMQPError):
                await self._source.cancel(old)
            if len(full) > 1:
                self._full.set()  # the other lane is full too

    def __aiter__(self) -> _Inbox:
        return self

    async def __anext__(self) -> Delivery:
        """The next delivery; QueueDeleted once the broker cancelled this consumer because
        its queue is gone (``_check_queue``). It awaits nothing but the next delivery or
        that end, so cancelling it at any moment loses nothing."""
        while self.queue.empty():
            if self._ended is not None:
                raise self._ended
            self._wake.clear()
            self._waiting = True
            self._pace()
            try:
                await self._wake.wait()
            finally:
                self._waiting = False
        return _AmqpDelivery(self.queue.get_nowait(), self)


async def _watch_channel(
    channel: AbstractChannel, inbox: _Inbox
) -> Callable[[aiormq.abc.AbstractChannel], None]:
    """Have ``inbox`` hear every basic.cancel the broker sends on ``channel`` and count the
    bodies read for it (:meth:`_Inbox.count_frames_of`), also after the robust connection
    reopened it (on a new aiormq channel). Returns what stops it, given the channel's
    current aiormq channel: a channel used again for another consumer must not keep
    calling the inboxes it served."""

    async def watch(_: object = None) -> None:
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(inbox.on_broker_cancel)
        inbox.count_frames_of(underlay)

    await watch()
    if isinstance(channel, aio_pika.RobustChannel):
        channel.reopen_callbacks.add(watch)

    def unwatch(underlay: aiormq.abc.AbstractChannel) -> None:
        underlay.on_consumer_cancel_callbacks.discard(inbox.on_broker_cancel)
        frames = getattr(underlay, "frames", None)
        if isinstance(frames, DeliverFrames):
            frames.on_deliver = None
        if isinstance(channel, aio_pika.RobustChannel):
            channel.reopen_callbacks.discard(watch)

    return unwatch


class AmqpTransport(Transport):
    def __init__(
        self,
        url: str = DEFAULT_BROKER_URL,
        *,
        connect_timeout: float = 10.0,
        outage_seconds: float = 120.0,
        name: str | None = None,
        consumers_apart: bool = False,
    ) -> None:
        try:
            parsed = yarl.URL(url)
        except (ValueError, TypeError):
            raise BrokerUnavailable(
                "bad broker URL: expected amqp://user:password@host:port/vhost"
            ) from None
        if parsed.scheme not in ("amqp", "amqps") or not parsed.host:
            raise BrokerUnavailable(
                f"bad broker URL {redact(url)!r}: expected amqp://user:password@host:port/vhost"
            )
        for key in ("cafile", "certfile", "keyfile"):
            path = parsed.query.get(key)
            if path is not None and not os.path.isfile(path):
                raise BrokerUnavailable(
                    f"{key}={path} in the broker URL: no such file; fix the path"
                )
        self.url = url
        external = parsed.query.get("auth", "").lower() == "external"
        #: The broker user this connection publishes as (the ``user_id`` of its messages,
        #: which RabbitMQ checks): the URL's user; with EXTERNAL (a client certificate),
        #: the URL names the certificate's user (``amqps://p0@host/?auth=external...``).
        self.identity: str | None = parsed.user or (None if external else "guest")
        self._timeout = connect_timeout
        #: How long a publish keeps retrying while the connection is being re-established.
        self._outage_seconds = outage_seconds
        #: The connection's client-provided name, as the management API lists it.
        self.name = name or f"fedq pid {os.getpid()}"
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        #: Idle channels of the declarations' pool (plain, not robust: a closed one is
        #: replaced on demand, and nothing declared through them is replayed on reconnect).
        self._idle_declarers: list[AbstractChannel] = []
        self._declaring_slots = asyncio.Semaphore(DECLARING_CHANNELS)
        #: Consumers open or opening: each holds a channel.
        self._consumers = 0
        #: The channel of the last consumer that closed on the shared connection, with its
        #: prefetch window (see :meth:`_keep_for_reuse`), or None.
        self._idle_consumer: tuple[AbstractChannel, int] | None = None
        self._channel_max = 0
        self._bodies = _SharedBodies()
        #: Each ``consume`` on a connection of its own (see :meth:`_consumer_connection`).
        self._consumers_apart = consumers_apart
        #: Locks held (:meth:`hold`), taken again after each reconnect; the future fails
        #: with LockLost if one could not be.
        self._held: set[str] = set()
        self._lock_lost: asyncio.Future[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()

    async def hold(self, name: str) -> None:
        async def declare(channel: AbstractChannel) -> None:
            await channel.declare_queue(name, durable=False, exclusive=True, auto_delete=True)

        try:
            await self._on_declaring(f"lock {name!r}", declare)
        except Locked:
            raise Locked(f"lock {name!r} is held by another connection") from None
        if not self._held:
            self._conn.reconnect_callbacks.add(self._hold_again)
        self._held.add(name)

    async def _hold_again(self, *_: object) -> None:
        """After a reconnect: the broker dropped the exclusive queues with the old
        connection, so take each lock again, at once, in a task of its own (the callback
        runs inside the reconnect)."""

        async def again() -> None:
            for name in sorted(self._held):
                try:
                    await self.hold(name)
                except TransportError as exc:
                    if not self._lost_locks().done():
                        self._lost_locks().set_exception(
                            LockLost(f"lost {name!r} while the broker was unreachable: {exc}")
                        )

        task = asyncio.ensure_future(again())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def release(self, name: str) -> None:
        if name not in self._held:
            return
        self._held.discard(name)
        if self._connection is None or self._connection.is_closed:
            return  # gone with its connection
        # Bounded: a stopping coordinator must not ride out an outage for it; a lost
        # connection takes the lock with it anyway.
        with contextlib.suppress(TransportError, TimeoutError):
            await asyncio.wait_for(self.delete_queue(name), RELEASE_SECONDS)

    async def held_lost(self) -> None:
        await asyncio.shield(self._lost_locks())

    def _lost_locks(self) -> asyncio.Future[None]:
        if self._lock_lost is None:
            self._lock_lost = asyncio.get_running_loop().create_future()
        return self._lock_lost

    async def connect(self) -> None:
        self._connection = await self._open(self.name)
        try:
            underlay = self._conn.transport
            assert underlay is not None, "connect_robust returns connected"
            self._channel_max = underlay.connection.connection_tune.channel_max or 65535
            await self._reopen_publisher()
        except BaseException:  # ``async with`` does not close what its enter left open
            await self.close()
            raise

    async def _open(self, name: str) -> AbstractRobustConnection:
        """A robust connection named ``name``, or BrokerUnavailable saying why not."""
        where = redact(self.url)
        try:
            return await aio_pika.connect_robust(
                self.url,
                timeout=self._timeout,
                reconnect_interval=1.0,
                client_properties={"connection_name": name},
                connection_class=RobustConnection,
            )
        except aiormq.exceptions.ProbableAuthenticationError:
            raise BrokerUnavailable(
                f"RabbitMQ at {where} refused the login: check the user and password in the URL"
            ) from None
        except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
            raise BrokerUnavailable(_cannot_connect(where, exc)) from None

    async def _reopen_publisher(self) -> None:
        self._exchanges.clear()
        if self._publisher is not None and not self._publisher.is_closed:
            await self._publisher.close()
        self._publisher = await self._conn.channel(publisher_confirms=True, on_return_raises=True)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        self._connection = None
        self._publisher = None
        self._idle_declarers.clear()
        self._idle_consumer = None
        self._exchanges.clear()

    @property
    def _conn(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise TransportError("transport is not connected")
        return self._connection

    async def declare_exchange(self, name: str, kind: ExchangeKind) -> None:
        async def declare(channel: AbstractChannel) -> None:
            await channel.declare_exchange(name, aio_pika.ExchangeType(kind), durable=True)

        await self._on_declaring(f"exchange {name!r}", declare)

    async def declare_queue(
        self,
        name: str,
        *,
        durable: bool = True,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        async def declare(channel: AbstractChannel) -> None:
            await channel.declare_queue(
                name, durable=durable, exclusive=exclusive, arguments=dict(arguments or {})
            )

        await self._on_declaring(f"queue {name!r}", declare)

    async def bind(self, queue: str, exchange: str, routing_key: str = "") -> None:
        async def bind(channel: AbstractChannel) -> None:
            # No passive declare first: a missing queue fails the bind itself (NOT_FOUND).
            q = await channel.get_queue(queue, ensure=False)
            await q.bind(exchange, routing_key=routing_key)

        await self._on_declaring(f"binding {queue!r} -> {exchange!r}", bind)

    async def delete_queue(self, name: str) -> None:
        async def delete(channel: AbstractChannel) -> None:
            await channel.queue_delete(name)

        await self._on_declaring(f"queue {name!r}", delete)

    async def delete_exchange(self, name: str) -> None:
        async def delete(channel: AbstractChannel) -> None:
            await channel.exchange_delete(name)

        await self._on_declaring(f"exchange {name!r}", delete)
        self._exchanges.pop(name, None)

    async def queue_depth(self, name: str) -> int:
        async def depth(channel: AbstractChannel) -> int:
            queue = await channel.get_queue(name, ensure=True)
            return int(queue.declaration_result.message_count or 0)

        return await self._on_declaring(f"queue {name!r}", depth)

    async def _queue_exists(self, name: str) -> bool:
        try:
            await self.queue_depth(name)
        except TransportError as exc:
            if "NOT_FOUND" in str(exc):
                return False
            raise
        return True

    async def queue_consumers(self, name: str) -> int:
        async def consumers(channel: AbstractChannel) -> int:
            queue = await channel.get_queue(name, ensure=True)
            return int(queue.declaration_result.consumer_count or 0)

        return await self._on_declaring(f"queue {name!r}", consumers)

    async def _on_declaring(
        self, what: str, operation: Callable[[AbstractChannel], Awaitable[T]]
    ) -> T:
        """``operation`` on a channel of the declarations' pool. Caught by a lost connection
        (a broker restart), it is done again once the robust connection is back, up to
        ``outage_seconds`` (then ConnectionLost), as a publish is: every operation here is
        idempotent (a declaration, a binding, a deletion, a count). Raising the client's
        own connection error instead would end whoever asked (the coordinator's control
        consumer answering a join, a participant checking its queue) over a restart.

        A caller cancelled (a timeout, a shutdown) leaves at once, but the attempt under
        way finishes on its own: aiormq, cancelled in the middle of an RPC, closed the
        channel and reused its number before RabbitMQ had closed it, and RabbitMQ answered
        by closing the whole connection (CHANNEL_ERROR - second 'channel.open' seen), with
        every consumer on it and every delivery it held unacked. Two more ways aiormq let
        that happen, whenever RabbitMQ closes a channel, are made right in
        :mod:`fedq.messages.channel_closing`."""
        deadline = time.monotonic() + self._outage_seconds
        retrying = False
        while True:
            attempt = asyncio.ensure_future(self._declare_once(what, operation))
            try:
                return await asyncio.shield(attempt)
            except (*_CONNECTION_LOST, asyncio.CancelledError) as exc:
                if not attempt.done():  # this task is being cancelled
                    self._background.add(attempt)
                    attempt.add_done_callback(self._finished_alone)
                    raise
                await self._ride_out(exc, deadline, what, warned=retrying)
                retrying = True

    async def _declare_once(
        self, what: str, operation: Callable[[AbstractChannel], Awaitable[T]]
    ) -> T:
        async with self._declaring(what) as channel:
            return await operation(channel)

    def _finished_alone(self, attempt: asyncio.Future[Any]) -> None:
        """An attempt whose caller was cancelled has ended: whatever it raised is retrieved
        (nobody is left to hear it)."""
        self._background.discard(attempt)
        if not attempt.cancelled():
            attempt.exception()

    async def _ride_out(
        self, exc: BaseException, deadline: float, what: str, *, warned: bool
    ) -> None:
        """After ``exc`` (the connection lost, or an aiormq future cancelled with it): raise
        it if this task itself is being cancelled, ConnectionLost once the outage lasted
        past ``deadline``; else say so (once) and wait a moment before ``what`` is tried
        again, while the robust connection comes back."""
        if isinstance(exc, asyncio.CancelledError) and _being_cancelled():
            raise exc
        if time.monotonic() > deadline:
            raise ConnectionLost(
                f"RabbitMQ at {redact(self.url)} was unreachable for more than "
                f"{self._outage_seconds:.0f} s ({what})"
            ) from exc
        if not warned:
            log.warning("%s interrupted (%s); retrying", what, exc)
        await asyncio.sleep(0.5)

    @asynccontextmanager
    async def _declaring(self, what: str) -> AsyncIterator[AbstractChannel]:
        """A channel of the declarations' pool, for one operation. After any failure it is
        dropped (the broker may have closed it, or an RPC may be left half done)."""
        async with self._declaring_slots:
            channel = None
            while self._idle_declarers and channel is None:
                idle = self._idle_declarers.pop()
                channel = None if idle.is_closed else idle
            if channel is None:
                try:
                    channel = await aio_pika.Channel(self._conn, publisher_confirms=False)
                except RuntimeError as exc:  # aiormq's "<Connection ...> closed"
                    # The robust connection is being re-established: a lost connection.
                    raise aiormq.exceptions.AMQPConnectionError(str(exc)) from exc
            try:
                yield channel
            except BaseException as exc:
                if not channel.is_closed:
                    with contextlib.suppress(Exception):
                        await channel.close()
                if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
                    raise Inequivalent(f"broker refused {what}: {exc}") from None
                if isinstance(exc, aiormq.exceptions.ChannelLockedResource):
                    raise Locked(f"{what} is exclusive to another connection") from None
                if isinstance(exc, aiormq.exceptions.ChannelClosed):
                    raise TransportError(f"broker refused {what}: {exc}") from None
                raise
            self._idle_declarers.append(channel)

    @property
    def max_consumers(self) -> int:
        """Consumers this connection can hold: the broker's ``channel_max`` less the
        publishing and declaring channels (2047 - 17 = 2030 with RabbitMQ's defaults)."""
        return self._channel_max - 1 - DECLARING_CHANNELS

    async def _exchange(self, name: str) -> AbstractExchange:
        assert self._publisher is not None, "connect() first"
        exchange = self._exchanges.get(name)
        if exchange is None:
            if name == "":
                exchange = self._publisher.default_exchange
            else:
                exchange = await self._publisher.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange

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
        message = aio_pika.Message(
            body,
            message_id=message_id,
            type=type,
            user_id=self.identity,
            headers=dict(headers or {}),
            content_type="application/x-msgpack",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        deadline = time.monotonic() + self._outage_seconds
        retrying = False
        while True:
            try:
                target = await self._exchange(exchange)
                await target.publish(message, routing_key, mandatory=mandatory)
                return
            except aio_pika.exceptions.PublishError as exc:
                raise Unroutable(f"no queue bound to {exchange!r} for {routing_key!r}") from exc
            except aio_pika.exceptions.DeliveryError as exc:
                # basic.nack: with fedq's queues, one at its limit with reject-publish.
                raise QueueFull(f"RabbitMQ refused the message to {exchange!r}: {exc}") from exc
            except aiormq.exceptions.ChannelClosed as exc:
                # e.g. NOT_FOUND for a missing exchange: the broker closed the publishing
                # channel; open a fresh one so the next publish works.
                await self._reopen_publisher()
                raise TransportError(f"broker refused the publish to {exchange!r}: {exc}") from None
            except (*_CONNECTION_LOST, asyncio.CancelledError) as exc:
                # The message may or may not have arrived, so this is at-least-once:
                # consumers dedupe by message_id.
                await self._ride_out(exc, deadline, f"publish to {exchange!r}", warned=retrying)
                retrying = True

    @asynccontextmanager
    async def consume(self, queue: str, *, prefetch: int) -> AsyncIterator[AsyncIterator[Delivery]]:
        self._conn  # noqa: B018 (raises TransportError when not connected)
        if self._consumers >= self.max_consumers:
            # Checked here, before any await: the broker would close the whole connection.
            raise TransportError(
                f"this connection already has {self._consumers} consumers, as many as the "
                f"broker's channel_max ({self._channel_max}) allows: each takes a channel "
                f"(each virtual participant one), so run at most {self.max_consumers} "
                "participants per process"
            )
        self._consumers += 1
        try:
            async with self._consuming(queue, prefetch) as inbox:
                yield inbox
        finally:
            self._consumers -= 1

    @asynccontextmanager
    async def _consumer_connection(self, queue: str) -> AsyncIterator[AbstractRobustConnection]:
        """The connection a consumer of ``queue`` takes its channel on: the shared one, or
        with ``consumers_apart`` one of its own, closed with it. Apart, whatever takes a
        connection down (a frame the client cannot read, a heartbeat missed while busy)
        takes only that consumer's, not the process's publishing or its other consumers:
        the coordinator consumes updates and control events so."""
        if not self._consumers_apart:
            yield self._conn
            return
        connection = await self._open(f"{self.name} {queue}")
        try:
            yield connection
        finally:
            await connection.close()

    @asynccontextmanager
    async def _consuming(self, queue: str, prefetch: int) -> AsyncIterator[AsyncIterator[Delivery]]:
        async with (
            self._consumer_connection(queue) as connection,
            self._consuming_on(connection, queue, prefetch) as inbox,
        ):
            yield inbox

    @asynccontextmanager
    async def _consuming_on(
        self, connection: AbstractRobustConnection, queue: str, prefetch: int
    ) -> AsyncIterator[AsyncIterator[Delivery]]:
        channel, inbox, unwatch = await self._start_consumer(connection, queue, prefetch)
        try:
            try:
                yield inbox
            finally:
                await inbox.stop(cancel=not channel.is_closed)
        finally:
            inbox.closed = True
            kept = await self._keep_for_reuse(connection, channel, inbox.window, unwatch)
            # Closed with the connection meanwhile (see _Inbox.stop): nothing to close.
            if not kept and not channel.is_closed:
                with contextlib.suppress(*_CONNECTION_LOST):
                    await channel.close()

    async def _keep_for_reuse(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractChannel,
        window: int,
        unwatch: Callable[[aiormq.abc.AbstractChannel], None],
    ) -> bool:
        """Keep the channel of a consumer that closed on the shared connection for the next
        consumer, once its deliveries not settled are given back (basic.recover, requeue):
        what closing it did. A participant stops consuming every time it trains, and a
        new channel each time (open, qos, a passive declare, close) cost it and the
        broker more than the consumer itself: at P = 1M with 10 participant processes,
        the participants' CPU a round went from 0.15 to 0.16 s to 0.13 to 0.15 s and the
        broker's from 0.16 to 0.18 s to 0.14 to 0.16 s (4 alternating pairs; the round
        time did not move, 1.01x: it is off the critical path; bench/README.md, "Where a
        round's time goes"). One channel is kept: a participant process consumes one
        queue at a time. False: the caller closes the channel."""
        if connection is not self._connection or self._idle_consumer is not None:
            return False
        if channel.is_closed:
            return False

        async def recovered() -> aiormq.abc.AbstractChannel:
            # A robust channel's underlay waits for the connection: in an outage, as long.
            underlay = await channel.get_underlay_channel()
            await underlay.basic_recover(requeue=True)
            return underlay

        try:
            underlay = await asyncio.wait_for(recovered(), RECOVER_SECONDS)
        except (*_CONNECTION_LOST, aiormq.exceptions.AMQPError, RuntimeError, TimeoutError):
            return False
        unwatch(underlay)
        self._idle_consumer = (channel, window)
        return True

    async def _consumer_channel(
        self, connection: AbstractRobustConnection, window: int
    ) -> AbstractChannel:
        """A channel for a consumer of ``window`` deliveries: the one kept on the shared
        connection (:meth:`_keep_for_reuse`) if it is still open, else a new one. A kept
        channel is always the shared connection's, and only there do consumers take one:
        with ``consumers_apart`` none is ever kept."""
        kept, self._idle_consumer = self._idle_consumer, None
        if kept is not None and not kept[0].is_closed:
            channel, qos = kept
        else:
            try:
                channel = await connection.channel(publisher_confirms=False)
            except RuntimeError as exc:  # aiormq's "<Connection ...> closed"
                raise aiormq.exceptions.AMQPConnectionError(str(exc)) from exc
            qos = 0
        if qos != window:
            try:
                await channel.set_qos(prefetch_count=window)
            except BaseException:
                with contextlib.suppress(Exception):
                    await channel.close()
                raise
        return channel

    def _paced_reads(
        self, connection: AbstractRobustConnection, prefetch: int
    ) -> PausableReads | None:
        """The socket reads that bound a consumer's bodies in hand, or None for its window
        to: only a connection of the consumer's own (``consumers_apart``) is paused, and
        only for a small prefetch (a consumer that holds its deliveries, see
        :class:`_Inbox`)."""
        if not self._consumers_apart or not 2 <= prefetch <= MOST_SPLIT:
            return None
        return getattr(connection, "reads", None)

    async def _start_consumer(
        self, connection: AbstractRobustConnection, queue: str, prefetch: int
    ) -> tuple[AbstractChannel, _Inbox, Callable[[aiormq.abc.AbstractChannel], None]]:
        """A channel consuming ``queue``, and its inbox. Caught by a lost connection (a
        broker restart as a participant takes its queue back after training), it is tried
        again once the robust connection is back, up to ``outage_seconds`` (then
        ConnectionLost), as a publish is: raising the client's own error instead ended the
        participant (tests/faults/test_broker_restarts.py caught it). A consumer half made
        goes with its channel, so trying again starts from nothing."""
        deadline = time.monotonic() + self._outage_seconds
        retrying = False
        while True:
            channel: AbstractChannel | None = None
            try:
                reads = self._paced_reads(connection, prefetch)
                window = PACED_WINDOW if reads is not None else prefetch
                channel = await self._consumer_channel(connection, lanes_of(window)[0])
                try:
                    # On a kept channel the queue is known, and only basic.consume asks.
                    q = await channel.get_queue(queue, ensure=True)
                    inbox = _Inbox(
                        q,
                        max(1, prefetch),
                        self._bodies,
                        lambda: self._queue_exists(queue),
                        reads,
                    )
                    unwatch = await _watch_channel(channel, inbox)
                    await inbox.start()
                except aiormq.exceptions.ChannelNotFoundEntity:
                    raise TransportError(f"no queue {queue!r}") from None
                except aiormq.exceptions.ChannelLockedResource:
                    raise Locked(f"queue {queue!r} is exclusive to another connection") from None
                return channel, inbox, unwatch
            except BaseException as exc:
                if channel is not None and not channel.is_closed:
                    with contextlib.suppress(Exception):
                        await channel.close()
                if not isinstance(exc, (*_CONNECTION_LOST, asyncio.CancelledError)):
                    raise
                await self._ride_out(exc, deadline, f"consuming {queue!r}", warned=retrying)
                retrying = True
