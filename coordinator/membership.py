"""Membership: who is alive, from the participants' joins, heartbeats and leaves.

The control queue (``fedq.F.coordinator``) is consumed apart from the updates: a join is
answered with the current model, heartbeats keep a participant alive for
``liveness_seconds``, a leave forgets it. What this remembers is bounded whatever ids
senders claim (:meth:`Membership.forget_silent`), and each event costs O(1) amortised.

Who sends a control message is known three ways: the routing key (``heartbeat.<p>``: with
the rendered definitions' topic permissions a participant may publish only its own), the
broker user (``user_id``, checked with ``--verify-identity``) and the id in the body. An
event whose body names another participant than its key, or than its user, is ignored and
counted (:attr:`Membership.ignored`), never remembered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, OrderedDict

from pydantic import ValidationError

from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.observers import Observers
from fedq.coordinator.publish import Publisher
from fedq.messages.codec import MalformedMessage, decode_message
from fedq.messages.schema import CONTROL_MESSAGE, ControlMessage, Heartbeat, Join, Leave
from fedq.messages.topology import Topology, participant_key
from fedq.messages.transport import Delivery, Transport, TransportError

log = logging.getLogger("fedq.coordinator")

#: Control messages the broker may push ahead of the one being handled.
CONTROL_IN_FLIGHT = 64
#: Ids remembered beyond the N participants (a restarted participant under a new id, a
#: typo), before the oldest are forgotten whether or not they are still within the
#: liveness window. What is counted alive is never more than N.
REMEMBERED_SLACK = 64
#: How late after its expiry a silent participant may still be counted alive.
EXPIRY_SLACK = 0.05


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
        #: participant -> last sign of life (wall clock), oldest first; a leave removes it.
        self.last_seen: OrderedDict[str, float] = OrderedDict()
        #: Control events ignored, by why: ``wrong_key`` (the body names another participant
        #: than its routing key), ``forged`` (than its broker user, ``--verify-identity``),
        #: ``undecodable_properties`` (the client could not decode its properties),
        #: ``not_in_roster`` (an id the roster does not name, ``--roster``).
        self.ignored: Counter[str] = Counter()
        #: What the observers were last told :meth:`alive` is.
        self.reported_alive = 0

    async def serve(self) -> None:
        """Consume the control queue until cancelled, and report expiries as they happen.
        A malformed message is logged and acked: nothing a sender publishes there stops
        the coordinator."""
        # A plain task, not a TaskGroup: the consumer's own error (QueueDeleted, ...) must
        # come out as itself, not wrapped in an ExceptionGroup.
        expiries = asyncio.create_task(self._report_expiries())
        try:
            async with self.transport.consume(
                self.topology.coordinator, prefetch=CONTROL_IN_FLIGHT
            ) as events:
                async for delivery in events:
                    event = self._decode(delivery)
                    if event is not None:
                        await self.on_event(event, delivery.user_id, delivery.routing_key)
                    with contextlib.suppress(TransportError):  # from before a reconnect: harmless
                        await delivery.ack()
        finally:
            expiries.cancel()

    async def _report_expiries(self) -> None:
        """Tell the observers (the dashboard, the metrics) when a participant falls out of
        the liveness window: events alone would leave the last count standing when every
        participant went silent (killed, cut off), exactly when it matters. Wakes when the
        oldest sign of life expires, so each expiry is reported within EXPIRY_SLACK."""
        while True:
            oldest = next(iter(self.last_seen.values()), None)
            expires = (oldest or time.time()) + self.config.liveness_seconds
            await asyncio.sleep(max(EXPIRY_SLACK, expires - time.time() + EXPIRY_SLACK))
            alive = self.alive()
            if alive < self.reported_alive:
                log.info(
                    "%d participant(s) not heard from within %.0f s: %d alive",
                    self.reported_alive - alive, self.config.liveness_seconds, alive,
                )  # fmt: skip
                self._report_alive()

    def _report_alive(self) -> None:
        self.reported_alive = self.alive()
        self.observers.participants_alive(self.reported_alive)

    def _decode(self, delivery: Delivery) -> ControlMessage | None:
        """The event ``delivery`` brings, or None (logged and counted) when it brings none."""
        if delivery.undecodable is not None:  # its sender (user_id) is unknown too
            self.ignored["undecodable_properties"] += 1
            log.warning("ignored a control message: %s", delivery.undecodable)
            return None
        try:
            return CONTROL_MESSAGE.validate_python(decode_message(delivery.body).fields)
        except (MalformedMessage, ValidationError) as exc:
            log.warning("ignored a malformed control message: %s", exc)
            return None

    async def on_event(
        self, event: ControlMessage, user_id: str | None, routing_key: str | None = None
    ) -> None:
        """Fold one event in. ``routing_key`` None: not known (a direct call), not checked."""
        if not isinstance(event, Join | Heartbeat | Leave):
            return  # the coordinator's own announcements: not bound to its queue
        if routing_key is not None and routing_key != participant_key(
            event.kind, event.participant
        ):
            self._ignore("wrong_key", event, f"routing key {routing_key!r}")
            return
        if self.config.verify_identity and user_id != event.participant:
            self._ignore("forged", event, f"broker user {user_id!r}")
            return
        roster = self.config.participant_roster
        if roster is not None and event.participant not in roster:
            self._ignore("not_in_roster", event, f"broker user {user_id!r}")
            return
        now = time.time()
        if isinstance(event, Leave):
            self.last_seen.pop(event.participant, None)
        else:
            self.last_seen[event.participant] = now
            self.last_seen.move_to_end(event.participant)
            if isinstance(event, Join):
                await self.answer_join(event.participant)
        self.forget_silent(now)
        self._report_alive()

    def _ignore(self, reason: str, event: Join | Heartbeat | Leave, sender: str) -> None:
        self.ignored[reason] += 1
        count = self.ignored[reason]
        if count & (count - 1) == 0:  # the 1st, 2nd, 4th ...: a flood logs a few lines
            log.warning(
                "ignored a %s claiming participant %r from %s (%s; %d so far)",
                event.kind,
                event.participant,
                sender,
                reason,
                count,
            )

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
        """Bound what control messages make the coordinator remember (any sender may claim
        ids it makes up, unless ``--verify-identity``): forget, from the oldest end, those
        not heard from within the liveness window, then any beyond N + REMEMBERED_SLACK.
        Each id is forgotten at most once per time it was remembered: O(1) amortised."""
        horizon = now - self.config.liveness_seconds
        while self.last_seen:
            oldest, seen = next(iter(self.last_seen.items()))
            if seen >= horizon and len(self.last_seen) <= self.capacity:
                break
            del self.last_seen[oldest]

    @property
    def capacity(self) -> int:
        return self.config.participants + REMEMBERED_SLACK

    def draw(self, size: int, seed: str, version: int) -> frozenset[str] | None:
        """``size`` of the participants alive now, drawn at random from ``seed`` (the same
        draw for the same seed and the same live participants: a version redone after a
        crash draws its sample again) to train on model ``version``; None (everyone) while
        fewer are known alive. Ids are whatever senders claim unless ``--roster`` or
        ``--verify-identity`` make them real: made-up ones drawn only leave the version to
        its deadline. The observers hear the draw and whom it was made among."""
        self.forget_silent(time.time())
        alive = sorted(list(self.last_seen)[-self.config.participants :])
        if len(alive) < size:
            log.info(
                "%d participants alive, fewer than a sample of %d: all train", len(alive), size
            )
            self.observers.sample_drawn(version, alive, None)
            return None
        sample = random.Random(seed).sample(alive, size)
        self.observers.sample_drawn(version, alive, sorted(sample))
        return frozenset(sample)

    def alive_ids(self) -> tuple[set[str], int]:
        """Who is alive (the N heard from last) and :meth:`alive`'s count of them."""
        self.forget_silent(time.time())
        ids = set(list(self.last_seen)[-self.config.participants :])
        return ids, len(ids)

    def alive(self) -> int:
        """Participants heard from within the liveness window that did not leave, at most
        N: ids beyond the federation's N participants are never counted."""
        self.forget_silent(time.time())
        return min(len(self.last_seen), self.config.participants)
