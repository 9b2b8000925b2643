"""The coordinator process: the loop, the commit transaction, membership.

Per version: open (publish the model) -> collect: each delivery goes through the intake and
is folded, counted as a duplicate, or dead-lettered -> the mode says it may close ->
commit: aggregate, server step, evaluate, checkpoint (model and optimizer state), ledger,
ack the held deliveries, announce. Cancelling :meth:`Coordinator.run` (SIGINT) acks
nothing that is not committed: the broker redelivers it to the next coordinator, which
resumes from the ledger's last version.

What lives elsewhere: the checks (:mod:`.intake`), what is admitted and when a version
closes (:mod:`.modes`), the maths (:mod:`.strategies`), the unacked deliveries
(:mod:`.held`), and whoever watches (:mod:`.observers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from fedq.coordinator.app import CoordinatorApp
from fedq.coordinator.assembly import Assembled, Assembler, ChunkCopy, Stream
from fedq.coordinator.checkpoint import (
    checkpoint_path,
    load_optimizer_state,
    map_checkpoint,
    release_pages,
    save_checkpoint,
)
from fedq.coordinator.config import ConfigError, CoordinatorConfig
from fedq.coordinator.held import HeldDeliveries
from fedq.coordinator.intake import (
    Admission,
    Admitted,
    Candidate,
    ChunkCandidate,
    Duplicate,
    Intake,
    Refused,
    Rejection,
    Verdict,
)
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.modes import CloseReason, OpenVersion, make_mode, refuse_after_last
from fedq.coordinator.observers import CommitTimings, CoordinatorObserver, Observers, UpdateSeen
from fedq.coordinator.records import UpdateRecord, VersionRecord, summary_of
from fedq.coordinator.strategies import Aggregation, AggregationContext
from fedq.coordinator.strategies.base import DeltaPieces, WholeDelta
from fedq.coordinator.strategy import compose_strategy
from fedq.messages.chunks import chunk_count, encode_chunks
from fedq.messages.codec import (
    MalformedMessage,
    Weights,
    decode_message,
    encode_message,
    spec_of,
)
from fedq.messages.failpoints import failpoint
from fedq.messages.schema import (
    CONTROL_MESSAGE,
    MESSAGE_TYPES,
    ControlMessage,
    FederationDone,
    Heartbeat,
    Join,
    Leave,
    ModelMeta,
    RoundClosed,
    RoundOpen,
    UpdateMeta,
    VersionProgress,
)
from fedq.messages.topology import (
    FEDERATION_DONE,
    ROUND_CLOSED,
    ROUND_OPEN,
    VERSION_PROGRESS,
    Topology,
)
from fedq.messages.transport import Delivery, Transport, TransportError

log = logging.getLogger("fedq.coordinator")

#: Update bodies the broker may push ahead of the one being checked.
UPDATES_IN_FLIGHT = 4


@dataclass
class FederationResult:
    federation: str
    mode: str
    rounds_completed: int
    model_version: int
    updates_incorporated: int
    updates_rejected: int
    rejected_by_reason: dict[str, int]
    duplicates: int
    final_metrics: dict[str, float]
    wall_seconds: float
    state_dir: str
    #: Differential privacy spent by the last version (None: DP off).
    epsilon: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class Coordinator:
    def __init__(
        self,
        config: CoordinatorConfig,
        app: CoordinatorApp,
        transport: Transport,
        observers: Sequence[CoordinatorObserver] = (),
    ) -> None:
        self.config = config
        self.app = app
        self.transport = transport
        self.topology = Topology(
            config.federation, config.updates_queue, config.updates_queue_bytes
        )
        self.observers = Observers(observers)
        self.mode = make_mode(config)
        self.ledger = UpdateLedger(config.state_dir / "ledger.sqlite")
        self.strategy = compose_strategy(config, self._dp_seed())
        #: participant -> last sign of life; a leave removes it.
        self.last_seen: dict[str, float] = {}
        #: The open version's model: its weights and meta, and its body when it fits in
        #: one message (a chunked model is encoded again for each publish, one chunk at a
        #: time, rather than kept). The weights are mapped from the version's checkpoint
        #: and their pages let go as they are read: in RAM, the coordinator holds the
        #: accumulator of the next version, not also the model.
        self._model: tuple[ModelMeta, Weights] | None = None
        self._model_body: bytes | None = None
        #: One model publish at a time, so two copies of a chunked model (the fanout and a
        #: join's answer) never interleave in a participant's queue: bounded by bytes, it
        #: drops the oldest chunks first, which could then be the same index of both
        #: copies. In sequence, the newest copy always arrives whole.
        self._publishing_model = asyncio.Lock()
        #: Chunked updates in assembly; made in run() once the model's shapes are known.
        self.assembler: Assembler | None = None
        self._progress_sent = 0.0

    def _dp_seed(self) -> int:
        """The secret seed of differential privacy's noise, kept with the ledger so that a
        version redone after a crash gets the very same noise."""
        seed = self.ledger.get_meta("dp_seed")
        if seed is None:
            seed = str(secrets.randbits(63))
            self.ledger.set_meta("dp_seed", seed)
        return int(seed)

    # ----------------------------------------------------------------- run
    async def run(self) -> FederationResult:
        started = time.monotonic()
        try:
            await self.topology.declare_core(self.transport)
            weights, version = await self._restore()
            intake = Intake(
                self.config.federation,
                spec_of(weights),
                self.ledger.digest_of,
                verify_identity=self.config.verify_identity,
                max_bytes=self.config.max_update_bytes,
                max_norm=self.config.max_update_norm,
                max_per_user=self.config.max_updates_per_participant,
            )
            self.assembler = Assembler(
                self.config.state_dir / "spool",
                intake.spec,
                max_bytes=intake.max_bytes,
                max_norm=self.config.max_update_norm,
                max_streams=self.config.max_streams,
                timeout_seconds=self.config.chunk_timeout,
            )
            if self.strategy.aggregator.holds_updates:
                held_bytes = self.config.k * sum(w.nbytes for w in weights.values())
                log.info(
                    "aggregator %s keeps all %d deltas of a version: %.1f MB, in RAM up to "
                    "--robust-memory-mb %.0f, beyond it in a file",
                    self.config.aggregator,
                    self.config.k,
                    held_bytes / 1e6,
                    self.config.robust_memory_mb,
                )
            control = asyncio.create_task(self._serve_control(), name="fedq-control")
            try:
                # Up to K deliveries are held until the commit acks them, their bodies
                # released, which takes them out of the prefetch; every other one is settled
                # as soon as it is checked. So the prefetch bounds only the bodies in
                # memory: a few keep the pipe full, whatever K (memory independent of K).
                async with self.transport.consume(
                    self.topology.updates, prefetch=UPDATES_IN_FLIGHT
                ) as deliveries:
                    while version < self.config.rounds:
                        weights, version = await self._make_version(
                            weights, version, deliveries, intake
                        )
                    await self._finish(version)
                    await self._refuse_unfinished(version)
                    if self.config.linger_seconds > 0:
                        await self._refuse_late(deliveries, intake, version)
            finally:
                control.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await control
            return await asyncio.to_thread(self._result, started)
        finally:
            await asyncio.to_thread(self.ledger.close)

    async def _restore(self) -> tuple[Weights, int]:
        """The model to continue from: the ledger's last version, or the app's v0."""
        known = await asyncio.to_thread(self.ledger.get_meta, "federation")
        if known is not None and known != self.config.federation:
            raise ConfigError(
                f"state dir {self.config.state_dir} belongs to federation {known!r}; "
                "use another --state-dir"
            )
        await asyncio.to_thread(self.ledger.set_meta, "federation", self.config.federation)
        models = self.config.state_dir / "models"
        last = await asyncio.to_thread(self.ledger.last_version)
        if last is not None:
            # The ledger decides: a checkpoint newer than its last version was written by a
            # coordinator that died before committing it, and is overwritten when redone.
            log.info("resuming from model v%d", last.version)
            path = checkpoint_path(models, last.version)
            weights = await asyncio.to_thread(map_checkpoint, path)
            state = await asyncio.to_thread(load_optimizer_state, path)
            self.strategy.optimizer.load_state(state)
            return weights, last.version
        initial = await asyncio.to_thread(self.app.initial_weights)
        path = await asyncio.to_thread(save_checkpoint, models, 0, initial)
        del initial
        return await asyncio.to_thread(map_checkpoint, path), 0

    # ------------------------------------------------------------- versions
    async def _make_version(
        self,
        weights: Weights,
        version: int,
        deliveries: AsyncIterator[Delivery],
        intake: Intake,
    ) -> tuple[Weights, int]:
        open_ = self.mode.open(version)
        intake.new_version()
        aggregation = self.strategy.aggregator.start(
            AggregationContext(
                template=weights,
                capacity=open_.quorum,
                memory_budget=int(self.config.robust_memory_mb * 2**20),
                spill_dir=self.config.state_dir / "spill",
                version=version + 1,
            )
        )
        held = HeldDeliveries()
        try:
            await self._open(open_, weights)
            reason = await self._collect(open_, aggregation, held, deliveries, intake)
            return await self._commit(open_, reason, weights, aggregation, held)
        finally:
            aggregation.close()

    async def _open(self, open_: OpenVersion, weights: Weights) -> None:
        meta = ModelMeta(
            federation=self.config.federation,
            version=open_.version,
            round=open_.round,
            rounds_total=self.config.rounds,
        )
        self._model = (meta, weights)
        self._model_body = None
        if chunk_count(weights, self.config.chunk_bytes) == 1:
            self._model_body = await asyncio.to_thread(
                encode_message, meta, weights, self.config.codec
            )
        if open_.round is not None:
            await self._publish_control(
                ROUND_OPEN,
                RoundOpen(
                    federation=self.config.federation,
                    round=open_.round,
                    version=open_.version,
                    quorum=open_.quorum,
                    deadline_seconds=open_.deadline_seconds,
                ),
            )
        await self._publish_model(self.topology.models, "")
        self.observers.version_opened(open_.version, open_.round)
        await self._publish_progress(open_, force=True)

    async def _publish_progress(self, open_: OpenVersion, *, force: bool) -> None:
        """``version.progress`` for whoever watches: at once when forced (a version opened,
        an update was folded), else at most once a second, so a flood costs no more."""
        now = time.monotonic()
        if not force and now - self._progress_sent < 1.0:
            return
        self._progress_sent = now
        await self._publish_control(
            VERSION_PROGRESS,
            VersionProgress(
                federation=self.config.federation,
                mode=self.config.mode,
                version=open_.version,
                round=open_.round,
                accepted=len(open_.records),
                quorum=open_.quorum,
                refused=open_.refused,
                seconds_left=max(0.0, open_.seconds_left(now)),
                rounds_total=self.config.rounds,
            ),
        )

    async def _collect(
        self,
        open_: OpenVersion,
        aggregation: Aggregation,
        held: HeldDeliveries,
        deliveries: AsyncIterator[Delivery],
        intake: Intake,
    ) -> CloseReason:
        admit: Admission = functools.partial(self.mode.admit, open_)
        assembler = self.assembler
        assert assembler is not None, "run() makes the assembler"
        # Held deliveries go back to the queue and are taken again before the broker's
        # consumer_timeout would close the channel (see HeldDeliveries).
        hold_for = self.config.consumer_timeout / 2
        while (reason := open_.close_reason()) is None:
            wait = open_.seconds_left()
            returning = held.next_return(hold_for)
            for due in (assembler.next_expiry(), returning):
                if due is not None:
                    wait = min(wait, due - time.monotonic())
            try:
                delivery = await asyncio.wait_for(anext(deliveries), timeout=max(0.01, wait))
            except TimeoutError:
                delivery = None
            if returning is not None and time.monotonic() >= returning:
                returned = await held.return_older_than(hold_for)
                log.info("returned %d held deliveries to the queue to take them again", returned)
            for stream, rejection in assembler.expired():
                open_.refused += 1
                await self._dead_letter_stream(stream, rejection, open_.version)
            if delivery is None:
                continue
            verdict = await asyncio.to_thread(
                intake.check, delivery.body, delivery.user_id, held.digest_of, admit
            )
            folded = False
            if isinstance(verdict, Candidate):
                pieces = WholeDelta(verdict.deltas)
                whole = {0: delivery}
                size = len(delivery.body)
                await self._fold(
                    verdict.meta,
                    pieces,
                    verdict.admitted,
                    verdict.digest,
                    whole,
                    size,
                    open_,
                    aggregation,
                    held,
                )
                folded = True
            elif isinstance(verdict, ChunkCandidate):
                folded = await self._take_chunk(verdict, delivery, admit, open_, aggregation, held)
            else:
                size = len(delivery.body)
                if isinstance(verdict, Duplicate) and verdict.of == "held":
                    replaced = held.replace(verdict.meta.update_id, delivery, verdict.chunk)
                    if replaced is None:  # a returned delivery, back: held again
                        continue
                    delivery = replaced
                open_.refused += 1
                await self._settle(verdict, delivery, open_.version, size)
            del verdict  # its tensors are views over the body: let the body go
            await self._publish_progress(open_, force=folded)
        return reason

    async def _take_chunk(
        self,
        candidate: ChunkCandidate,
        delivery: Delivery,
        admit: Admission,
        open_: OpenVersion,
        aggregation: Aggregation,
        held: HeldDeliveries,
    ) -> bool:
        """Spool a chunk; fold its update when it is the last one and the whole passes.
        Returns whether an update was folded."""
        assembler = self.assembler
        assert assembler is not None, "run() makes the assembler"
        size = len(delivery.body)
        try:
            outcome = await asyncio.to_thread(assembler.add, candidate, delivery)
        except Rejection as rejection:
            open_.refused += 1
            await self._settle(Refused(rejection, candidate.meta), delivery, open_.version)
            return False
        delivery.release_body()  # spooled
        if isinstance(outcome, ChunkCopy):
            open_.refused += 1
            copy = Duplicate(candidate.meta, "in assembly", candidate.chunk.index)
            await self._settle(copy, outcome.replaced, open_.version, size)
            return False
        if not isinstance(outcome, Assembled):
            return False
        stream = outcome.stream
        try:
            try:
                pieces = await asyncio.to_thread(assembler.finish, stream)
                # Admitted again: the version may have moved on while the chunks came.
                admitted = admit(stream.meta)
            except Rejection as rejection:
                assembler.remember(stream.update_id, rejection)
                open_.refused += 1
                await self._dead_letter_stream(stream, rejection, open_.version)
                return False
            await self._fold(
                stream.meta,
                pieces,
                admitted,
                stream.digest,
                stream.deliveries(),
                stream.size,
                open_,
                aggregation,
                held,
            )
            return True
        finally:
            stream.close()

    async def _dead_letter_stream(self, stream: Stream, rejection: Rejection, version: int) -> None:
        """A refused chunked update: each chunk that came goes to the dead-letter queue as it
        came (read back from the spool) with the reason, and is acked; the ledger records
        the update's refusal once."""
        for index in sorted(stream.chunks):
            delivery = stream.chunks[index].delivery
            await self._dead_letter(
                delivery, await asyncio.to_thread(stream.read, index), rejection
            )
            await self._ack_settled(delivery)
        stream.close()
        await self._record_settled(
            Refused(rejection, stream.meta), stream.update_id, version, stream.size
        )

    async def _refuse_unfinished(self, version: int) -> None:
        """After the last version: chunked updates still in assembly will never be folded."""
        assert self.assembler is not None, "run() makes the assembler"
        for stream in self.assembler.drain():
            rejection = Rejection(
                "stale",
                f"update was still in assembly when the last version, v{version}, was committed",
            )
            await self._dead_letter_stream(stream, rejection, version)

    async def _fold(
        self,
        meta: UpdateMeta,
        pieces: DeltaPieces,
        admitted: Admitted,
        digest: str,
        deliveries: dict[int, Delivery],
        size: int,
        open_: OpenVersion,
        aggregation: Aggregation,
        held: HeldDeliveries,
    ) -> None:
        """Fold an admitted update and hold its deliveries (one, or one per chunk) until
        the commit."""
        await asyncio.to_thread(
            aggregation.add_pieces, pieces, float(meta.num_examples), admitted.scale
        )
        open_.records.append(
            UpdateRecord(
                update_id=meta.update_id,
                participant=meta.participant,
                round=meta.round,
                base_version=meta.base_version,
                num_examples=meta.num_examples,
                weight=meta.num_examples * admitted.scale,
                staleness=admitted.staleness,
                digest=digest,
                metrics=dict(meta.metrics),
                size=size,
            )
        )
        held.hold(meta.update_id, deliveries, digest)
        failpoint("collecting")
        self.observers.update_seen(
            UpdateSeen(
                meta.participant,
                True,
                None,
                meta.base_version,
                admitted.staleness,
                size,
                dict(meta.metrics),
            )
        )

    async def _settle(
        self, verdict: Verdict, delivery: Delivery, version: int, size: int | None = None
    ) -> None:
        """A duplicate is recorded and acked; a refusal is copied to the DLQ with its reason,
        recorded, then acked. Either way it is off the coordinator's hands at once. ``size``:
        the body's bytes, when ``delivery`` is not the one that brought them (a held copy
        it replaced)."""
        assert isinstance(verdict, Duplicate | Refused), "candidates are folded, not settled"
        if isinstance(verdict, Refused):
            await self._dead_letter(delivery, delivery.body, verdict.rejection)
        await self._ack_settled(delivery)
        size = len(delivery.body) if size is None else size
        await self._record_settled(verdict, delivery.message_id, version, size)

    async def _dead_letter(self, delivery: Delivery, body: bytes, rejection: Rejection) -> None:
        """A copy of ``body`` (what ``delivery`` brought) to the dead-letter queue, with the
        reason in ``x-fedq-reason``."""
        headers = dict(delivery.headers)
        headers["x-fedq-reason"] = rejection.header()
        await self.transport.publish(
            "",
            self.topology.rejected,
            body,
            message_id=delivery.message_id,
            type=delivery.type,
            headers=headers,
        )
        log.info("rejected update: %s", rejection.header())

    @staticmethod
    async def _ack_settled(delivery: Delivery) -> None:
        try:
            await delivery.ack()
        except TransportError as exc:  # redelivered later and settled again
            log.warning("ack of a refused update failed: %s", exc)

    async def _record_settled(
        self, verdict: Duplicate | Refused, message_id: str | None, version: int, size: int
    ) -> None:
        """A settled (refused or duplicate) update into the ledger and to the observers."""
        meta: UpdateMeta | None
        if isinstance(verdict, Duplicate):
            meta, reason = verdict.meta, "duplicate"
            detail = f"the same bytes as update {meta.update_id}, already {verdict.of}"
            if verdict.chunk:
                detail = f"chunk {verdict.chunk}: {detail}"
        else:
            meta, reason, detail = verdict.meta, verdict.rejection.reason, verdict.rejection.detail
        await asyncio.to_thread(
            self.ledger.record_rejection,
            meta.update_id if meta else message_id,
            meta.participant if meta else None,
            meta.round if meta else None,
            meta.base_version if meta else None,
            version,
            reason,
            detail,
        )
        self.observers.update_seen(
            UpdateSeen(
                meta.participant if meta else None,
                False,
                reason,
                meta.base_version if meta else None,
                size=size,
            )
        )

    async def _commit(
        self,
        open_: OpenVersion,
        reason: CloseReason,
        weights: Weights,
        aggregation: Aggregation,
        held: HeldDeliveries,
    ) -> tuple[Weights, int]:
        version = open_.version + 1
        clock = time.perf_counter()
        delta = await asyncio.to_thread(aggregation.result)
        new = await asyncio.to_thread(self.strategy.optimizer.step, weights, delta)
        del delta
        aggregated = time.perf_counter()
        metrics = await asyncio.to_thread(self.app.evaluate, new) or {}
        evaluated = time.perf_counter()
        path = await asyncio.to_thread(
            save_checkpoint,
            self.config.state_dir / "models",
            version,
            new,
            self.strategy.optimizer.state(),
        )
        # Served from the file from here on: the RAM it took goes to the next accumulator.
        new = await asyncio.to_thread(map_checkpoint, path)
        saved = time.perf_counter()
        failpoint("after_checkpoint")
        record = VersionRecord(
            version=version,
            round=open_.round,
            closed_by=reason,
            total_weight=open_.total_weight,
            opened_at=open_.opened_wall,
            committed_at=time.time(),
            checkpoint=str(path),
            metrics=metrics,
            epsilon=self.strategy.epsilon(version),
        )
        head = await asyncio.to_thread(self.ledger.commit_version, record, open_.records)
        # Logged so the chain's head is also recorded outside the ledger (fedq audit).
        log.info("committed v%d, ledger chain %s", version, head)
        failpoint("after_ledger_commit")
        self.observers.commit_timed(
            CommitTimings(
                version=version,
                aggregate=aggregated - clock,
                evaluate=evaluated - aggregated,
                checkpoint=saved - evaluated,
                ledger=time.perf_counter() - saved,
            )
        )
        # Committed: from here a redelivery of these updates is a duplicate, never re-applied.
        await held.ack_all()
        if open_.round is not None:
            await self._publish_control(
                ROUND_CLOSED,
                RoundClosed(
                    federation=self.config.federation,
                    round=open_.round,
                    version=version,
                    reason=reason,
                    contributors=open_.contributors,
                ),
            )
        self.observers.version_committed(summary_of(record, open_.records, {}))
        failpoint("between_versions")
        return new, version

    async def _finish(self, version: int) -> None:
        last = await asyncio.to_thread(self.ledger.last_version)
        done = FederationDone(
            federation=self.config.federation,
            rounds_completed=version,
            model_version=version,
            metrics=last.metrics if last else {},
        )
        await self._publish_control(FEDERATION_DONE, done)

    async def _refuse_late(
        self, deliveries: AsyncIterator[Delivery], intake: Intake, version: int
    ) -> None:
        """After the last version, refuse what still arrives (stragglers' work) while some
        participant is alive, at most ``linger_seconds``: a straggler's update is then
        counted and dead-lettered now rather than found by the next coordinator."""
        refuse = refuse_after_last(version)
        deadline = time.monotonic() + self.config.linger_seconds
        while (left := deadline - time.monotonic()) > 0:
            everyone_left = self._alive() == 0
            try:
                delivery = await asyncio.wait_for(anext(deliveries), timeout=min(left, 0.5))
            except TimeoutError:
                if everyone_left:  # and half a second passed with nothing left to refuse
                    return
                continue
            verdict = await asyncio.to_thread(
                intake.check, delivery.body, delivery.user_id, _nothing_held, refuse
            )
            assert not isinstance(verdict, Candidate | ChunkCandidate), "nothing is admitted now"
            await self._settle(verdict, delivery, version)

    # -------------------------------------------------------------- control
    async def _publish_control(self, key: str, message: Any) -> None:
        await self.transport.publish(
            self.topology.control,
            key,
            encode_message(message),
            type=MESSAGE_TYPES[message.kind],
        )

    async def _serve_control(self) -> None:
        """Membership: answer a join with the current model; track heartbeats and leaves."""
        async with self.transport.consume(self.topology.coordinator, prefetch=64) as events:
            async for delivery in events:
                try:
                    event = CONTROL_MESSAGE.validate_python(decode_message(delivery.body).fields)
                except (MalformedMessage, ValidationError) as exc:
                    log.warning("ignored a malformed control message: %s", exc)
                else:
                    await self._on_control(event, delivery.user_id)
                with contextlib.suppress(TransportError):  # from before a reconnect: harmless
                    await delivery.ack()

    async def _on_control(self, event: ControlMessage, user_id: str | None) -> None:
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
            await self._answer_join(event.participant)
        elif isinstance(event, Heartbeat):
            self.last_seen[event.participant] = now
        elif isinstance(event, Leave):
            self.last_seen.pop(event.participant, None)
        self._forget_silent(now)
        self.observers.participants_alive(self._alive())

    async def _answer_join(self, participant: str) -> None:
        """Send a joining participant the current model directly (its queue may have been
        bound after the fanout, or it restarted after acking the model), but only to a
        queue that exists and holds nothing: a model there is what the join would send.
        So a flood of joins, under any ids, gets at most one model per model the
        participant takes (a chunked model is hundreds of megabytes). No time limit: a
        participant killed and restarted within a second must get the model again."""
        if self._model is None:
            return  # nothing open yet: the participant gets the model when a version opens
        queue = self.topology.model_queue(participant)
        try:
            waiting = await self.transport.queue_depth(queue)
        except TransportError:
            log.info("join from %r, which has no queue %s: not answered", participant, queue)
            return
        if not waiting:
            await self._publish_model("", queue)

    def _forget_silent(self, now: float) -> None:
        """Bound what control messages make the coordinator remember (any sender can
        claim any participant id): past a few entries per participant, forget those not
        heard from within the liveness window."""
        if len(self.last_seen) > 2 * self.config.participants + 1000:
            horizon = now - self.config.liveness_seconds
            self.last_seen = {p: seen for p, seen in self.last_seen.items() if seen >= horizon}

    def _alive(self) -> int:
        now = time.time()
        return sum(now - seen <= self.config.liveness_seconds for seen in self.last_seen.values())

    async def _publish_model(self, exchange: str, routing_key: str) -> None:
        """The current model: to every participant (fanout) or one queue (default exchange)."""
        assert self._model is not None, "a version is open"
        meta, weights = self._model
        message_id = f"{self.config.federation}-v{meta.version}"
        headers = {"federation": self.config.federation, "version": meta.version}
        if self._model_body is not None:
            await self.transport.publish(
                exchange,
                routing_key,
                self._model_body,
                message_id=message_id,
                type=MESSAGE_TYPES["model"],
                headers=headers,
            )
            return
        bodies = encode_chunks(
            meta,
            weights,
            self.config.codec,
            self.config.chunk_bytes,
            read=lambda: release_pages(weights.values()),
        )
        async with self._publishing_model:
            index = 0
            while (body := await asyncio.to_thread(next, bodies, None)) is not None:
                await self.transport.publish(
                    exchange,
                    routing_key,
                    body,
                    message_id=f"{message_id}.{index}",
                    type=MESSAGE_TYPES["model"],
                    headers={**headers, "chunk_index": index},
                )
                if exchange:  # the fanout of a new version, not a join's answer
                    failpoint("publishing_model")
                index += 1

    # --------------------------------------------------------------- result
    def _result(self, started: float) -> FederationResult:
        """Counts come from the ledger, so they cover every run of this state dir."""
        history = self.ledger.history()
        refused = self.ledger.rejection_counts()
        duplicates = refused.pop("duplicate", 0)
        last = history[-1] if history else None
        return FederationResult(
            federation=self.config.federation,
            mode=self.config.mode,
            rounds_completed=len(history),
            model_version=last.version if last else 0,
            updates_incorporated=self.ledger.count_updates(),
            updates_rejected=sum(refused.values()),
            rejected_by_reason=refused,
            duplicates=duplicates,
            final_metrics=last.metrics if last else {},
            wall_seconds=time.monotonic() - started,
            state_dir=str(self.config.state_dir),
            epsilon=last.epsilon if last else None,
            history=[h.__dict__ for h in history],
        )


def _nothing_held(update_id: str) -> str | None:
    return None
