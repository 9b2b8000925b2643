"""Membership: who is alive, from the participants' joins, heartbeats and leaves.

The control queue (``fedq.F.coordinator``) is consumed apart from the updates: a join is
answered with the current model, heartbeats keep a participant alive for
``liveness_seconds``, a leave forgets it. What this remembers is bounded whatever ids
senders claim (:meth:`Membership.forget_silent`).
"""

from __future__ import annotations

import contextlib
import logging
import time

from pydantic import ValidationError

from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.observers import Observers
from fedq.coordinator.publish import Publisher
from fedq.messages.codec import MalformedMessage, decode_message
from fedq.messages.schema import CONTROL_MESSAGE, ControlMessage, Heartbeat, Join, Leave
from fedq.messages.topology import Topology
from fedq.messages.transport import Transport, TransportError

log = logging.getLogger("fedq.coordinator")

#: Control messages the broker may push ahead of the one being handled.
CONTROL_IN_FLIGHT = 64


class Membership:
    def __init__(
        self,
        config: CoordinatorConfig,
        transport: Transport,
        topology: Topology,
        publisher: Publisher,
        observers: Observers,
    ) -> None:
        self.config = config
        self.transport = transport
        self.topology = topology
        self.publisher = publisher
        self.observers = observers
        #: participant -> last sign of life (wall clock); a leave removes it.
        self.last_seen: dict[str, float] = {}

    async def serve(self) -> None:
        """Consume the control queue until cancelled. A malformed message is logged and
        acked: nothing a sender publishes there stops the coordinator."""
        async with self.transport.consume(
            self.topology.coordinator, prefetch=CONTROL_IN_FLIGHT
        ) as events:
            async for delivery in events:
                try:
                    event = CONTROL_MESSAGE.validate_python(decode_message(delivery.body).fields)
                except (MalformedMessage, ValidationError) as exc:
                    log.warning("ignored a malformed control message: %s", exc)
                else:
                    await self.on_event(event, delivery.user_id)
                with contextlib.suppress(TransportError):  # from before a reconnect: harmless
                    await delivery.ack()

    async def on_event(self, event: ControlMessage, user_id: str | None) -> None:
        if not isinstance(event, Join | Heartbeat | Leave):
            return  # the coordinator's own announcements: not bound to its queue
        if self.config.verify_identity and user_id != event.participant:
            log.warning(
                "ignored a %s claiming participant %r from broker user %r",
                event.kind,
                event.participant,
                user_id,
            )
            return
        now = time.time()
        if isinstance(event, Join):
            self.last_seen[event.participant] = now
            await self.answer_join(event.participant)
        elif isinstance(event, Heartbeat):
            self.last_seen[event.participant] = now
        elif isinstance(event, Leave):
            self.last_seen.pop(event.participant, None)
        self.forget_silent(now)
        self.observers.participants_alive(self.alive())

    async def answer_join(self, participant: str) -> None:
        """Send a joining participant the current model directly (its queue may have been
        bound after the fanout, or it restarted after acking the model), but only to a
        queue that exists and holds nothing: a model there is what the join would send.
        So a flood of joins, under any ids, gets at most one model per model the
        participant takes (a chunked model is hundreds of megabytes). No time limit: a
        participant killed and restarted within a second must get the model again."""
        if not self.publisher.has_model:
            return  # nothing open yet: the participant gets the model when a version opens
        queue = self.topology.model_queue(participant)
        try:
            waiting = await self.transport.queue_depth(queue)
        except TransportError:
            log.info("join from %r, which has no queue %s: not answered", participant, queue)
            return
        if not waiting:
            await self.publisher.model("", queue)

    def forget_silent(self, now: float) -> None:
        """Bound what control messages make the coordinator remember (any sender can
        claim any participant id): past a few entries per participant, forget those not
        heard from within the liveness window."""
        if len(self.last_seen) > 2 * self.config.participants + 1000:
            horizon = now - self.config.liveness_seconds
            self.last_seen = {p: seen for p, seen in self.last_seen.items() if seen >= horizon}

    def alive(self) -> int:
        """Participants heard from within the liveness window that did not leave."""
        now = time.time()
        return sum(now - seen <= self.config.liveness_seconds for seen in self.last_seen.values())
