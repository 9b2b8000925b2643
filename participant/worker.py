"""One participant: newest model in, local training in a thread, delta out.

It declares its own queue (``fedq.F.model.<id>``: newest model only, plus
``federation.done``), announces itself with ``join.<id>`` (the coordinator answers with the
current model), and loops until ``federation.done``. A model is acked once it is whole, and
the participant stops consuming while it trains: it holds no delivery however long training
takes (RabbitMQ closes the channel of a consumer that holds one past its
``consumer_timeout``); many participants in one process keep consuming instead
(``release_queue_while_training``). A crash mid-training loses no round: restarted, the
participant joins again and the coordinator answers with the current model; so does one
whose model stopped arriving part-way (its queue was bound in the middle of the fanout).
Heartbeats flow while training, and a change of state (training, sending, idle) is
reported at once unless a heartbeat went out less than STATE_BEAT_GAP_SECONDS ago.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from fedq.messages.chunks import chunk_count, encode_chunks
from fedq.messages.codec import (
    MalformedMessage,
    Weights,
    decode_message,
    encode_message,
)
from fedq.messages.schema import (
    MESSAGE_TYPES,
    Heartbeat,
    Join,
    Leave,
    ModelMeta,
    ParticipantState,
    UpdateMeta,
)
from fedq.messages.topology import UPDATE_KEY, Topology, participant_key
from fedq.messages.transport import Delivery, QueueFull, Transport, TransportError
from fedq.participant.app import (
    App,
    AppError,
    TrainConfig,
    TrainResult,
    app_train_config,
    train_on,
    trained,
)
from fedq.participant.compression import ErrorFeedback
from fedq.participant.config import ParticipantConfig
from fedq.participant.model_assembly import ModelAssembler, WholeModel, model_queue_bytes
from fedq.participant.working import working
from fedq.runtime.failpoints import failpoint
from fedq.runtime.sent_log import SentUpdate, append_sent

log = logging.getLogger("fedq.participant")

#: Longest wait between two publishes of an update the broker refused (its queue full).
MAX_BACKOFF = 5.0
#: A stalled model's re-joins back off up to this many times ``stalled_model_seconds``.
MAX_REJOIN_FACTOR = 16
#: How long a participant started before its coordinator waits for the exchanges, which
#: only the coordinator declares (a participant may not configure them), before it fails.
COORDINATOR_WAIT_SECONDS = 600.0
#: Until a first model comes, a line saying none came after this many seconds, then
#: after twice as long each time, up to the second bound.
NO_MODEL_NOTICE_SECONDS = 30.0
MAX_NO_MODEL_NOTICE_SECONDS = 600.0
#: When stopped (Ctrl-C, SIGTERM): the most the leave and the queue's deletion may take.
LEAVE_SECONDS = 5.0
#: A change of state goes out in a heartbeat of its own only if the last heartbeat is at
#: least this old; otherwise the next periodic one carries it. In rounds of a fraction of a
#: second, a heartbeat at every start and end of training was two more confirmed publishes
#: a round for each participant and two more deliveries for the coordinator, which a
#: person watching cannot tell apart anyway. At P = 1M with 10 participant processes
#: the round took 0.82x to 0.94x as long without them (median 0.89x, 4 alternating
#: pairs) and 0.40 to 0.46 CPU seconds against 0.45 to 0.50 (bench/README.md, "Where a
#: round's time goes").
STATE_BEAT_GAP_SECONDS = 1.0


def next_rejoin_wait(waited: float, base: float) -> float:
    """How long to wait for a stalled model after a re-join that followed a wait of
    ``waited``: twice as long, up to ``MAX_REJOIN_FACTOR`` x ``base``. A coordinator that
    cannot answer (down, or its fanout stuck) is asked ever less often, never more rarely
    than that bound, so a participant neither floods it nor waits unboundedly."""
    return min(2 * waited, MAX_REJOIN_FACTOR * base)


@dataclass(frozen=True)
class LocalUpdate:
    """An update a participant trained on one model version and sent, for the person
    watching it."""

    participant: str
    #: None in async mode.
    round: int | None
    version: int
    num_examples: int
    seconds: float
    update_bytes: int
    metrics: dict[str, float]


@dataclass
class ParticipantStats:
    participant: str
    rounds_trained: int = 0
    updates_sent: int = 0
    bytes_sent: int = 0
    last_version: int = -1
    state: ParticipantState = "idle"
    #: Models the app declined (``App.accepts``: a device not ready, an experiment's
    #: dropout), by version.
    rounds_dropped: int = 0
    #: Models it was not drawn to train on (client sampling).
    rounds_not_sampled: int = 0
    dropped_versions: list[int] = field(default_factory=list)
    #: Models skipped because something newer already waited behind them (see
    #: ``Participant._superseded``).
    models_superseded: int = 0
    #: Models and federation.done from another broker user than the coordinator's
    #: (``verify_coordinator``): acked, never trained on nor obeyed.
    forged_ignored: int = 0
    #: Update messages the broker refused (its updates queue full) and that were published
    #: again until taken.
    publishes_refused: int = 0


class Participant:
    def __init__(
        self,
        config: ParticipantConfig,
        app: App,
        transport: Transport,
        on_round: Callable[[LocalUpdate], None] | None = None,
    ) -> None:
        self.config = config
        self.on_round = on_round
        self.app = app
        self.transport = transport
        self.topology = Topology(config.federation)
        self.stats = ParticipantStats(config.participant_id)
        self._round = 0
        #: The newest version the app declined: it is not asked again when redelivered.
        self._declined = -1
        #: A lossy update codec's residual, carried across rounds (None: lossless).
        codec = config.update_codec
        self._feedback = ErrorFeedback(codec) if ErrorFeedback.wanted(codec) else None
        self._models = ModelAssembler()
        #: Set in :meth:`run`: whether the model queue may keep more than one message.
        self._queue_bounded_by_bytes = False
        #: When the last heartbeat went out (monotonic).
        self._last_beat = -float("inf")

    async def run(self) -> ParticipantStats:
        """Train on each model until ``federation.done``; then, or when cancelled (Ctrl-C,
        SIGTERM), say ``leave`` and take this participant's queue off the broker (a
        participant started again declares it anew, and its join brings the model)."""
        bound = await asyncio.to_thread(lambda: model_queue_bytes(self.app.initial_weights()))
        self._queue_bounded_by_bytes = bound is not None
        if self.config.sent_log is not None:  # there from the start, even with no line yet
            await asyncio.to_thread(self.config.sent_log.touch)
        await self._declare_queue(bound)
        try:
            await self._take_models()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # the broker may be gone: leave what is there
                await asyncio.wait_for(self._leave(), LEAVE_SECONDS)
            raise
        await self._leave()
        return self.stats

    async def _leave(self) -> None:
        pid = self.config.participant_id
        # After the last heartbeat, so the coordinator never hears from us after "leave".
        await self._control("leave", Leave(federation=self.config.federation, participant=pid))
        await self.transport.delete_queue(self.topology.model_queue(pid))

    async def _take_models(self) -> None:
        """Train on each model until ``federation.done``."""
        pid = self.config.participant_id
        beat = asyncio.create_task(self._heartbeats(), name=f"fedq-heartbeat-{pid}")
        consumer = contextlib.AsyncExitStack()
        inbox: AsyncIterator[Delivery] | None = None
        joined = False
        try:
            while True:
                if inbox is None:
                    inbox = await consumer.enter_async_context(
                        self.transport.consume(self.topology.model_queue(pid), prefetch=1)
                    )
                    if not joined:
                        await self._join()
                        joined = True
                async with contextlib.AsyncExitStack() as slot:
                    model = await self._next_model(inbox, slot)
                    if model is None:  # federation.done
                        return
                    if self.config.release_queue_while_training:
                        # Out of the consumer while training: nothing is delivered to this
                        # participant meanwhile, so however long training takes, it holds
                        # no delivery past RabbitMQ's consumer_timeout; what arrives waits
                        # in its queue (the newest model only). Chunks of a model not
                        # complete were not acked: they come back, and are assembled anew.
                        await consumer.aclose()
                        inbox = None
                        self._models = ModelAssembler()
                    await self._train(model)
                    if not self.config.release_queue_while_training:
                        # Held while training: the queue keeps only the newest model, so
                        # what this trains on next is the newest, not one superseded.
                        for delivery in model.deliveries:
                            await self._settle(delivery)
        finally:
            await consumer.aclose()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _declare_queue(self, bound: int | None) -> None:
        """Declare and bind this participant's queue, waiting (up to
        COORDINATOR_WAIT_SECONDS) for a coordinator that has not declared its exchanges."""
        pid = self.config.participant_id
        deadline = time.monotonic() + COORDINATOR_WAIT_SECONDS
        pause = 0.1
        while True:
            try:
                await self.topology.declare_participant(self.transport, pid, max_bytes=bound)
                return
            except TransportError as exc:
                if time.monotonic() + pause > deadline:
                    raise
                if pause == 0.1:
                    log.info("%s: waiting for the coordinator's exchanges (%s)", pid, exc)
            await asyncio.sleep(pause)
            pause = min(2 * pause, MAX_BACKOFF)

    async def _next_model(
        self, inbox: AsyncIterator[Delivery], slot: contextlib.AsyncExitStack
    ) -> WholeModel | None:
        """The next model to train on, with one of the process's working slots taken into
        ``slot``; None at ``federation.done``. Acked if the queue is released while
        training, else by the caller once the update is sent. The slot is taken first: the
        few at work per process keep memory O(few x model), and the others wait here,
        sharing the model's body."""
        stalled_after = self.config.stalled_model_seconds
        while True:
            delivery, stalled_after = await self._next_delivery(inbox, stalled_after)
            if self._undecodable(delivery) or self._forged(delivery):
                await self._settle(delivery)
                continue
            if delivery.type == MESSAGE_TYPES["federation.done"]:
                await self._settle(delivery)
                return None
            model, finished = await self._receive(delivery)
            if model is not None:
                if (
                    not self._sampled(model.meta)
                    or await self._superseded(model)
                    or self._declines(model.meta)
                ):
                    finished += model.deliveries
                    model = None
                else:
                    await slot.enter_async_context(working())
                    if self.config.release_queue_while_training:
                        finished += model.deliveries
            for settled in finished:
                await self._settle(settled)
            if model is not None:
                return model

    async def _next_delivery(
        self, inbox: AsyncIterator[Delivery], stalled_after: float
    ) -> tuple[Delivery, float]:
        """The next delivery, and how long to wait next for a model stalled part-way.
        Meanwhile a model whose chunks stopped coming for ``stalled_after`` seconds is
        asked for again (a join, then at growing intervals); and while no model came at
        all, one line now and then says so: a coordinator that is not running, or runs
        another federation, would otherwise leave this participant waiting in silence."""
        pid, notice, waited = self.config.participant_id, NO_MODEL_NOTICE_SECONDS, 0.0
        while True:
            partial = self._models.partial
            none_yet = max(self.stats.last_version, self._declined) < 0
            wait = stalled_after if partial is not None else notice if none_yet else None
            try:
                return await asyncio.wait_for(anext(inbox), wait), stalled_after
            except TimeoutError:
                pass
            if partial is None:
                waited += notice
                log.warning(
                    "%s: no model from the coordinator of %r after %.0f s: is `fedq "
                    "coordinator --federation %s` running on this broker?",
                    pid, self.config.federation, waited, self.config.federation,
                )  # fmt: skip
                notice = min(2 * notice, MAX_NO_MODEL_NOTICE_SECONDS)
                continue
            log.warning(
                "%s: model v%d stopped arriving after %d of its %d chunks; asking the "
                "coordinator for it again",
                pid,
                *partial,
            )
            await self._join()
            stalled_after = next_rejoin_wait(stalled_after, self.config.stalled_model_seconds)

    def _undecodable(self, delivery: Delivery) -> bool:
        """Whether the client could not decode ``delivery``'s properties: its type and
        sender are then unknown, so it is nothing to act on."""
        if delivery.undecodable is None:
            return False
        log.warning("%s: ignored a message: %s", self.config.participant_id, delivery.undecodable)
        return True

    def _forged(self, delivery: Delivery) -> bool:
        """With ``verify_coordinator``: whether ``delivery`` (a model, a chunk or
        federation.done) was published by another broker user than the coordinator's.
        RabbitMQ checks ``user_id`` against the login, so only the coordinator's own
        connection can publish as it; another participant with write on the models or
        control exchange cannot."""
        if not self.config.verify_coordinator or delivery.user_id == self.config.coordinator_user:
            return False
        self.stats.forged_ignored += 1
        log.warning(
            "%s: ignored a %s from broker user %r (the coordinator is %r)",
            self.config.participant_id,
            delivery.type,
            delivery.user_id,
            self.config.coordinator_user,
        )
        return True

    async def _settle(self, delivery: Delivery) -> None:
        try:
            await delivery.ack()
        except TransportError as exc:
            # The channel was re-opened (broker restart): the model comes back and is
            # skipped, since its version is already trained on.
            log.warning("%s: ack of the model failed (%s)", self.config.participant_id, exc)

    async def _receive(self, delivery: Delivery) -> tuple[WholeModel | None, list[Delivery]]:
        """The model ``delivery`` completes (it alone, or its last chunk), if any, and the
        deliveries to ack now (old versions, malformed ones, dropped chunks)."""
        try:
            decoded = decode_message(delivery.body)
            meta = decoded.meta(ModelMeta)
        except MalformedMessage as exc:  # only the coordinator should write here: skip it
            log.warning("%s: ignored a malformed model (%s)", self.config.participant_id, exc)
            return None, [delivery]
        seen = max(self.stats.last_version, self._declined)
        if meta.federation != self.config.federation or meta.version <= seen:
            return None, [delivery]  # already trained on or skipped (e.g. the join's answer)
        if decoded.chunk is None:  # copied only once at work (``working``)
            return WholeModel(meta, decoded, [delivery]), []
        try:
            result = await asyncio.to_thread(self._models.add, meta, decoded, delivery)
        except MalformedMessage as exc:
            log.warning("%s: ignored a malformed chunk (%s)", self.config.participant_id, exc)
            return None, [delivery]
        del decoded
        delivery.release_body()  # copied into the model's buffers
        return result

    async def _superseded(self, model: WholeModel) -> bool:
        """Whether something newer already waits behind ``model``, which came in one
        message: then it is acked, not trained on.

        A queue bounded by bytes (:func:`~.model_assembly.model_queue_bytes`) may keep
        more than the newest message: two models sent smaller than raw (``fp16``), or the
        last model with ``federation.done`` behind it. Whatever waits is newer (the queue
        is first in, first out), so training on this one would only make a stale update.
        A chunked model is trained on as it is: the next one's first chunks may wait
        behind it for as long as it takes to assemble, and skipping for them could starve
        a participant slower than the federation's versions."""
        if not self._queue_bounded_by_bytes or len(model.deliveries) > 1:
            return False
        try:
            waiting = await self.transport.queue_depth(
                self.topology.model_queue(self.config.participant_id)
            )
        except TransportError:
            return False  # the queue is not there to ask: train on what came
        if waiting:
            self.stats.models_superseded += 1
            log.debug(
                "%s skipped model v%d: a newer message waits",
                self.config.participant_id,
                model.meta.version,
            )
        return waiting > 0

    def _sampled(self, meta: ModelMeta) -> bool:
        """Whether this participant is to train on ``meta``'s model (client sampling: the
        coordinator names who; the others ack it and wait for the next)."""
        if meta.sampled is None or self.config.participant_id in meta.sampled:
            return True
        self.stats.rounds_not_sampled += 1
        return False

    def _declines(self, meta: ModelMeta) -> bool:
        """Whether the app declines ``meta``'s model (``App.accepts``): acked, not trained."""
        accepts = getattr(self.app, "accepts", None)
        if accepts is None or accepts(meta.version):
            return False
        self._declined = meta.version
        self.stats.rounds_dropped += 1
        self.stats.dropped_versions.append(meta.version)
        log.debug("%s declined model v%d", self.config.participant_id, meta.version)
        return True

    async def _train(self, model: WholeModel) -> None:
        """Train on ``model`` and send the update (in a working slot, taken by the caller)."""
        self.stats.state = "training"
        await self._state_changed()
        failpoint("training")
        try:
            await self._train_and_send(model)
        finally:
            self.stats.state = "idle"
        await self._state_changed()

    async def _train_and_send(self, model: WholeModel) -> None:
        meta = model.meta
        self._round = meta.round or 0
        started = time.monotonic()
        train = self.config.train or app_train_config(self.app)
        try:
            global_weights, result = await self._trained(model, train)
        except AppError:
            raise
        except Exception as exc:  # the user's code: one line naming it, not a traceback
            raise AppError(
                f"{self.config.participant_id}: the app failed to train on model "
                f"v{meta.version}: {exc.__class__.__name__}: {exc}"
            ) from exc
        update = UpdateMeta(
            federation=self.config.federation,
            participant=self.config.participant_id,
            round=meta.round,
            base_version=meta.version,
            num_examples=result.num_examples,
            metrics=result.metrics,
            train_seconds=time.monotonic() - started,
        )
        self.stats.state = "sending"
        sent = await self._send(update, result.weights, global_weights, meta.chunk_bytes)
        if self.config.sent_log is not None:
            sent_update = SentUpdate(
                update.federation, update.update_id, update.participant, meta.version, sent
            )
            await asyncio.to_thread(append_sent, self.config.sent_log, sent_update)
        self.stats.rounds_trained += 1
        self.stats.updates_sent += 1
        self.stats.bytes_sent += sent
        self.stats.last_version = meta.version
        if self.on_round is not None:
            self.on_round(
                LocalUpdate(
                    participant=update.participant,
                    round=update.round,
                    version=meta.version,
                    num_examples=update.num_examples,
                    seconds=update.train_seconds,
                    update_bytes=sent,
                    metrics=update.metrics,
                )
            )
        log.debug("%s sent its update on model v%d", self.config.participant_id, meta.version)

    async def _trained(self, model: WholeModel, train: TrainConfig) -> tuple[Weights, TrainResult]:
        """The participant's own copy of ``model`` and what the app trained from it. A plain
        ``train`` runs in the worker thread that made the copy: each hop between the event
        loop and a worker thread waits for a core, on a busy machine for milliseconds, and
        this path is the round's."""
        partition = self.config.partition
        if inspect.iscoroutinefunction(self.app.train):
            weights = await asyncio.to_thread(model.own_weights)
            return weights, await train_on(self.app, weights, partition, train)

        def copied_and_trained() -> tuple[Weights, TrainResult]:
            weights = model.own_weights()
            return weights, trained(self.app, weights, partition, train)

        return await asyncio.to_thread(copied_and_trained)

    async def _send(
        self, update: UpdateMeta, local: Weights, global_: Weights, chunk_bytes: int
    ) -> int:
        """Publish the update, in one message or in chunks of ``chunk_bytes``, the size its
        model announced (one body in memory at a time, each confirmed before the next is
        made); returns the bytes sent. A retried chunk is the same bytes under the same
        update id: the coordinator keeps one."""
        count, body, bodies = await asyncio.to_thread(
            self._first_body, update, local, global_, chunk_bytes
        )
        sent = 0
        for index in range(count):
            if index > 0:
                body = await asyncio.to_thread(next, bodies)
            headers: dict[str, str | int] = {
                "federation": update.federation,
                "participant": update.participant,
                **({} if update.round is None else {"round": update.round}),
                "base_version": update.base_version,
                "chunk_index": index,
                "chunk_count": count,
            }
            message_id = f"{update.update_id}.{index}" if count > 1 else update.update_id
            await self._publish_until_taken(body, message_id, headers)
            failpoint("publishing_update")
            sent += len(body)
        return sent

    def _first_body(
        self, update: UpdateMeta, local: Weights, global_: Weights, chunk_bytes: int
    ) -> tuple[int, bytes, Iterator[bytes]]:
        """(in a worker thread) The delta as sent: how many bodies carry it, the first one,
        and the iterator that makes the others (made with the delta: one hop fewer)."""
        delta = self._delta(local, global_, chunk_bytes)
        codec = self.config.update_codec if self._feedback is None else self._feedback.wire_codec
        bodies = encode_chunks(update, delta, codec, chunk_bytes)
        return chunk_count(delta, chunk_bytes), next(bodies), bodies

    async def _publish_until_taken(
        self, body: bytes, message_id: str, headers: dict[str, str | int]
    ) -> None:
        """Publish one update message; while the updates queue is full (RabbitMQ refuses
        it: a flood, or a coordinator that is down), publish it again, waiting longer each
        time up to MAX_BACKOFF seconds. The same bytes under the same id: counted once."""
        wait = 0.2
        while True:
            try:
                await self.transport.publish(
                    self.topology.updates,
                    UPDATE_KEY,
                    body,
                    message_id=message_id,
                    type=MESSAGE_TYPES["update"],
                    headers=headers,
                    mandatory=True,
                )
                return
            except QueueFull:
                if wait == 0.2:
                    log.warning(
                        "%s: the updates queue is full; publishing %s again until it is "
                        "taken (nothing is dropped)",
                        self.config.participant_id,
                        message_id,
                    )
                self.stats.publishes_refused += 1
                await asyncio.sleep(wait)
                wait = min(wait * 2, MAX_BACKOFF)

    def _delta(self, local: Weights, global_: Weights, chunk_bytes: int) -> Weights:
        """local - global, as the app transforms it (``App.transform_delta``) and compressed
        as configured (error feedback sees the chunks of ``chunk_bytes`` that will be sent),
        written over ``global_``: the participant's own copy of the model, of no use once
        trained on (one model-sized buffer fewer). ``local`` is left alone: an app may keep
        it."""
        delta = {}
        for name, w in global_.items():
            mine = local[name]
            if w.flags.writeable and w.shape == mine.shape:
                delta[name] = np.subtract(mine, w, out=w, dtype=w.dtype, casting="unsafe")
            else:
                delta[name] = np.subtract(mine, w, dtype=w.dtype)
        transform = getattr(self.app, "transform_delta", None)
        if transform is not None:
            delta = transform(delta)
        if self._feedback is not None:
            delta = self._feedback.compress(delta, chunk_bytes)
        return delta

    async def _join(self) -> None:
        """Ask the coordinator for the current model (it sends it if this one's queue exists
        and holds nothing)."""
        federation, pid = self.config.federation, self.config.participant_id
        await self._control("join", Join(federation=federation, participant=pid))

    async def _control(self, kind: str, message: Join | Heartbeat | Leave) -> None:
        await self.transport.publish(
            self.topology.control,
            participant_key(kind, self.config.participant_id),
            encode_message(message),
            type=MESSAGE_TYPES[kind],
        )

    async def _heartbeats(self) -> None:
        """One heartbeat every ``heartbeat_seconds`` at least: a change of state's own
        heartbeat counts, so this one waits from the last that went out (or from the
        start: the join announced this participant)."""
        started = time.monotonic()
        while True:
            due = max(self._last_beat, started) + self.config.heartbeat_seconds
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
                continue
            await self._beat()

    async def _state_changed(self) -> None:
        """Report the new state at once, unless a heartbeat went out less than
        STATE_BEAT_GAP_SECONDS ago (the next periodic one carries it)."""
        if time.monotonic() - self._last_beat >= STATE_BEAT_GAP_SECONDS:
            await self._beat()

    async def _beat(self) -> None:
        self._last_beat = time.monotonic()
        await self._control(
            "heartbeat",
            Heartbeat(
                federation=self.config.federation,
                participant=self.config.participant_id,
                round=self._round,
                state=self.stats.state,
                version=self.stats.last_version,
                updates_sent=self.stats.updates_sent,
                bytes_sent=self.stats.bytes_sent,
            ),
        )
