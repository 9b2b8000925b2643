"""What the federations say on their control exchanges, folded into in-memory state.

The listener declares its own queue, ``fedq-dashboard.<random>`` (not ``fedq.``: it is not
a federation's), exclusive to its connection, so that RabbitMQ deletes it when the
dashboard's connection closes or is lost, however the dashboard ends, and binds it
with ``#`` to each watched federation's ``fedq.F.control``: it receives a copy of every
progress, round and membership event and takes nothing from anyone. When the broker goes
away the listener says so in its status and starts over every few seconds; it never stops.
Its broker user needs to configure ``fedq-dashboard.*`` and read ``fedq.*.control``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import aiormq
from pydantic import ValidationError

from fedq.coordinator.roster import Roster
from fedq.dashboard.status import SourceStatus
from fedq.messages.amqp import AmqpTransport, BrokerUnavailable, redact
from fedq.messages.codec import MalformedMessage, decode_message
from fedq.messages.connect import open_transport
from fedq.messages.schema import (
    CONTROL_MESSAGE,
    ControlMessage,
    FederationDone,
    Heartbeat,
    Join,
    Leave,
    ParticipantState,
    VersionProgress,
)
from fedq.messages.topology import Topology, participant_key
from fedq.messages.transport import Delivery, TransportError

log = logging.getLogger("fedq.dashboard")
T = TypeVar("T")

#: What a broker that went away raises, through aio-pika or the transport. RuntimeError is
#: aio-pika's word for a channel or connection that is gone.
_BROKER_GONE = (TransportError, TimeoutError, OSError, RuntimeError, aiormq.exceptions.AMQPError)

#: A participant not heard from for this long is shown as gone (the coordinator's liveness).
GONE_AFTER_SECONDS = 15.0
#: Participants shown per federation at most: past it the one heard from longest ago is
#: forgotten. Any sender with write on the control exchange can make ids up (without the
#: rendered definitions' topic permissions); the page stays bounded whatever it sends.
MAX_SHOWN_PARTICIPANTS = 1000


@dataclass
class ParticipantLive:
    participant: str
    last_seen: float
    state: ParticipantState | None = None
    #: The model version it last trained on (-1: none yet).
    version: int = -1
    updates_sent: int = 0
    bytes_sent: int = 0
    left: bool = False

    def shown_state(self, now: float) -> str:
        """training, sending, idle, or gone (left, or silent for GONE_AFTER_SECONDS)."""
        if self.left or now - self.last_seen > GONE_AFTER_SECONDS:
            return "gone"
        return self.state or "idle"


@dataclass
class FederationLive:
    #: When anything was last heard from this federation.
    last_event: float = 0.0
    progress: VersionProgress | None = None
    #: When the progress was received: its deadline is at progress_at + seconds_left.
    progress_at: float = 0.0
    done: FederationDone | None = None
    done_at: float = 0.0
    participants: dict[str, ParticipantLive] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Done, and no version opened since (a restarted coordinator goes on)."""
        return self.done is not None and self.done_at >= self.progress_at


class LiveState:
    """Every watched federation's latest events; ``apply`` is the only writer."""

    def __init__(self, roster: Roster | None = None) -> None:
        self.federations: dict[str, FederationLive] = {}
        #: With a roster (``fedq dashboard --roster``), participants it does not name are
        #: never shown: any sender with write on a control exchange may make ids up.
        self.roster = roster

    def apply(self, message: ControlMessage, now: float) -> None:
        """Fold ``message`` in. round.open and round.closed only refresh ``last_event``: the
        version.progress sent with each says all the page shows."""
        federation = self.federations.setdefault(message.federation, FederationLive())
        federation.last_event = now
        if isinstance(message, VersionProgress):
            federation.progress, federation.progress_at = message, now
        elif isinstance(message, FederationDone):
            federation.done, federation.done_at = message, now
        elif isinstance(message, Join | Heartbeat | Leave):
            if self.roster is not None and message.participant not in self.roster:
                return
            shown = federation.participants
            seen = shown.pop(message.participant, None) or ParticipantLive(message.participant, now)
            shown[message.participant] = seen  # newest last: the oldest is forgotten first
            while len(shown) > MAX_SHOWN_PARTICIPANTS:
                del shown[next(iter(shown))]
            seen.last_seen, seen.left = now, isinstance(message, Leave)
            if isinstance(message, Heartbeat):
                seen.state, seen.version = message.state, message.version
                seen.updates_sent, seen.bytes_sent = message.updates_sent, message.bytes_sent


class ControlListener:
    """Follows the control exchange of every federation ``watched()`` names: each valid
    message goes to ``on_message``; ``on_change`` is told when the status changes."""

    def __init__(
        self,
        broker_url: str,
        watched: Callable[[], set[str]],
        on_message: Callable[[ControlMessage], None],
        on_change: Callable[[], None],
        *,
        retry_seconds: float = 3.0,
    ) -> None:
        self.broker_url = broker_url
        self.watched = watched
        self.on_message = on_message
        self.on_change = on_change
        self.retry_seconds = retry_seconds
        self.status = SourceStatus()
        self.queue = f"fedq-dashboard.{uuid.uuid4().hex[:12]}"

    async def run(self) -> None:
        """Listen until cancelled, starting over whenever the broker fails."""
        where = redact(self.broker_url)
        while True:
            try:
                await self._listen()
            except BrokerUnavailable as exc:
                self._down(f"{exc}; retrying every {self.retry_seconds:.0f} s")
            except _BROKER_GONE as exc:
                self._down(
                    f"lost RabbitMQ at {where} ({exc.__class__.__name__}): live progress and "
                    "heartbeats stop until it is back (`rabbitmq-server -detached`, or "
                    f"`rabbitmqctl status`); retrying every {self.retry_seconds:.0f} s"
                )
            await asyncio.sleep(self.retry_seconds)

    def _down(self, message: str) -> None:
        if self.status.ok is not False:
            log.warning("%s", message)
        self.status.set(False, message)
        self.on_change()

    async def _listen(self) -> None:
        transport = open_transport(self.broker_url, connect_timeout=5.0)
        await transport.connect()
        try:
            await self._timed(
                transport.declare_queue(
                    self.queue,
                    durable=False,
                    exclusive=True,
                    arguments={"x-max-length": 100_000},
                )
            )
            await self._bind_all(transport)
            async with transport.consume(self.queue, prefetch=256) as inbox:
                self.status.set(
                    True,
                    f"listening to RabbitMQ at {redact(self.broker_url)} on queue {self.queue}",
                )
                self.on_change()
                await self._follow(transport, inbox)
        finally:
            # Discarded, gone broker or not; its queue goes with the connection.
            with contextlib.suppress(*_BROKER_GONE):
                await asyncio.wait_for(transport.close(), 5.0)

    async def _follow(self, transport: AmqpTransport, inbox: AsyncIterator[Delivery]) -> None:
        """Fold events as they come; every few seconds bind newly found federations and make
        sure the broker and this queue are still there (a robust connection would hide it)."""
        next_check = time.monotonic() + self.retry_seconds
        while True:
            if time.monotonic() >= next_check:  # checked even in a flood of messages
                await self._bind_all(transport)
                await self._timed(transport.queue_depth(self.queue))
                next_check = time.monotonic() + self.retry_seconds
            try:
                delivery = await asyncio.wait_for(
                    anext(inbox), timeout=max(0.01, next_check - time.monotonic())
                )
            except TimeoutError:
                continue
            self._fold(delivery.body, delivery.routing_key)
            with contextlib.suppress(TransportError):  # from before a reconnect: harmless
                await delivery.ack()

    def _fold(self, body: bytes, routing_key: str) -> None:
        try:
            message = CONTROL_MESSAGE.validate_python(decode_message(body).fields)
        except (MalformedMessage, ValidationError) as exc:
            log.debug("ignored a control message that is not fedq's: %s", exc)
            return
        if routing_key != (
            participant_key(message.kind, message.participant)
            if isinstance(message, Join | Heartbeat | Leave)
            else message.kind
        ):
            # A participant's key names it (the broker's topic permissions), and only the
            # coordinator may publish under round.*, version.* and federation.done.
            log.debug("ignored a %s sent under routing key %r", message.kind, routing_key)
            return
        self.on_message(message)

    async def _bind_all(self, transport: AmqpTransport) -> None:
        """Bind to each watched federation's control exchange: idempotent, and redone every
        time because an exchange deleted at a run's end takes its bindings along."""
        for federation in sorted(self.watched()):
            # TransportError: no such exchange (yet), its coordinator has not declared it.
            with contextlib.suppress(TransportError):
                await self._timed(transport.bind(self.queue, Topology(federation).control, "#"))

    @staticmethod
    async def _timed(operation: Awaitable[T]) -> T:
        """A broker operation, given up after 5 s: a half-open connection would hang it."""
        return await asyncio.wait_for(operation, 5.0)
