"""The coordinator process: rounds over the broker, commit before ack, history in the ledger.

Loop per round: OPEN(r, v) -> collect valid updates -> QUORUM or DEADLINE -> aggregate ->
COMMIT (checkpoint v+1, then ledger) -> publish model v+1 -> ack the incorporated updates
-> OPEN(r+1, v+1). Rejected updates are copied to ``fedq.F.rejected`` with an
``x-fedq-reason`` header, recorded, then acked. Cancelling :meth:`Coordinator.run` (SIGINT)
acks nothing that is not committed: the broker redelivers it to the next coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedq.apps import App
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from fedq.coordinator.fedavg import apply_mean_delta
from fedq.coordinator.ledger import RoundHistory, UpdateLedger, VersionRecord
from fedq.coordinator.rounds import CloseReason, QuorumRound
from fedq.coordinator.validation import ModelSpec, Rejection, check_tensors, spec_of
from fedq.messages.codec import MalformedMessage, Weights, decode_message, encode_message
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
)
from fedq.messages.topology import (
    FEDERATION_DONE,
    ROUND_CLOSED,
    ROUND_OPEN,
    Topology,
    UpdatesQueueType,
)
from fedq.messages.transport import Delivery, Transport, TransportError

log = logging.getLogger("fedq.coordinator")


class ConfigError(ValueError):
    """The coordinator cannot run with these settings; the message says which and why."""


@dataclass(frozen=True)
class CoordinatorConfig:
    federation: str
    participants: int
    rounds: int
    state_dir: Path
    quorum: int | None = None
    min_quorum: int | None = None
    round_timeout: float = 120.0
    server_lr: float = 1.0
    codec: str = "raw"
    updates_queue: UpdatesQueueType = "quorum"
    #: Reject an update whose delta has a larger L2 norm (``norm_exceeded``); None: no bound.
    max_update_norm: float | None = None
    #: Reject an update whose broker user (AMQP ``user_id``, checked by RabbitMQ) is not the
    #: participant it claims to be (``forged``). Needs one broker user per participant.
    verify_identity: bool = False
    #: After the last round, keep refusing late updates at most this long ...
    linger_seconds: float = 0.0
    #: ... while some participant is alive: it left no ``leave`` and sent a heartbeat or
    #: join within this many seconds (participants beat every 5 s by default).
    liveness_seconds: float = 15.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_k <= self.k <= self.participants:
            raise ConfigError(
                f"need 1 <= --min-quorum ({self.min_k}) <= --quorum ({self.k}) <= "
                f"--participants ({self.participants})"
            )

    @property
    def k(self) -> int:
        return self.quorum or self.participants

    @property
    def min_k(self) -> int:
        return self.min_quorum or self.k


@dataclass
class FederationResult:
    federation: str
    rounds_completed: int
    model_version: int
    updates_incorporated: int
    updates_rejected: int
    rejected_by_reason: dict[str, int]
    duplicates: int
    final_metrics: dict[str, float]
    wall_seconds: float
    state_dir: str
    history: list[dict[str, Any]] = field(default_factory=list)


class CoordinatorObserver:
    """Hooks for whoever watches a coordinator: the CLI's live view, benchmarks, tests.

    Subclass and override what you need; the rest do nothing. Hooks run on the event loop
    and must not block it.
    """

    def round_opened(self, round_: int, version: int) -> None:
        """Round ``round_`` opened on model ``version``."""

    def update_seen(self, participant: str | None, accepted: bool, reason: str | None) -> None:
        """An update was folded in (``accepted``) or refused with ``reason``."""

    def round_committed(self, row: RoundHistory) -> None:
        """A new model version is committed and published."""

    def participants_alive(self, alive: int) -> None:
        """How many participants joined or beat within the liveness window and did not leave."""


class Coordinator:
    def __init__(
        self,
        config: CoordinatorConfig,
        app: App,
        transport: Transport,
        observer: CoordinatorObserver | None = None,
    ) -> None:
        self.config = config
        self.app = app
        self.transport = transport
        self.topology = Topology(config.federation, config.updates_queue)
        self.observer = observer or CoordinatorObserver()
        self.ledger = UpdateLedger(config.state_dir / "ledger.sqlite")
        #: participant -> last sign of life; a leave removes it.
        self.last_seen: dict[str, float] = {}
        self._model_body = b""
        self._model_meta: ModelMeta | None = None

    # ----------------------------------------------------------------- run
    async def run(self) -> FederationResult:
        started = time.monotonic()
        try:
            await self.topology.declare_core(self.transport)
            weights, version, round_ = await self._restore()
            spec = spec_of(weights)
            control = asyncio.create_task(self._serve_control(), name="fedq-control")
            try:
                # Up to K deliveries are held (bodies released) until the commit acks them;
                # two more can be in flight, so the client buffers at most K + 2 bodies.
                async with self.transport.consume(
                    self.topology.updates, prefetch=self.config.k + 2
                ) as deliveries:
                    while round_ <= self.config.rounds:
                        current = QuorumRound(
                            number=round_,
                            version=version,
                            model=weights,
                            quorum=self.config.k,
                            min_quorum=self.config.min_k,
                            deadline_seconds=self.config.round_timeout,
                        )
                        await self._open(current)
                        reason = await self._collect(current, deliveries, spec)
                        weights, version = await self._commit(current, reason)
                        round_ += 1
                    await self._finish(version)
                    if self.config.linger_seconds > 0:
                        await self._reject_late(deliveries, spec, version)
            finally:
                control.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await control
            return await asyncio.to_thread(self._result, started)
        finally:
            await asyncio.to_thread(self.ledger.close)

    async def _restore(self) -> tuple[Weights, int, int]:
        """The model to continue from: the last committed checkpoint, or the app's v0."""
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
            log.info("resuming from model v%d after round %d", last.version, last.round)
            weights = await asyncio.to_thread(
                load_checkpoint, checkpoint_path(models, last.version)
            )
            return weights, last.version, last.round + 1
        weights = await asyncio.to_thread(self.app.initial_weights)
        await asyncio.to_thread(save_checkpoint, models, 0, weights)
        return weights, 0, 1

    # --------------------------------------------------------------- rounds
    async def _open(self, current: QuorumRound) -> None:
        meta = ModelMeta(
            federation=self.config.federation,
            version=current.version,
            round=current.number,
            rounds_total=self.config.rounds,
        )
        self._model_body = await asyncio.to_thread(
            encode_message, meta, current.model, self.config.codec
        )
        self._model_meta = meta
        await self._publish_control(
            ROUND_OPEN,
            RoundOpen(
                federation=self.config.federation,
                round=current.number,
                version=current.version,
                quorum=current.quorum,
                deadline_seconds=current.deadline_seconds,
            ),
        )
        await self._publish_model(self.topology.models, "")
        self.observer.round_opened(current.number, current.version)

    async def _collect(
        self, current: QuorumRound, deliveries: AsyncIterator[Delivery], spec: ModelSpec
    ) -> CloseReason:
        while True:
            reason = current.close_reason()
            if reason is not None:
                return reason
            try:
                delivery = await asyncio.wait_for(
                    anext(deliveries), timeout=max(0.01, current.seconds_left())
                )
            except TimeoutError:
                continue
            await self._handle(delivery, current, spec)

    async def _handle(self, delivery: Delivery, current: QuorumRound, spec: ModelSpec) -> None:
        meta: UpdateMeta | None = None
        try:
            try:
                decoded = decode_message(delivery.body)
                meta = decoded.meta(UpdateMeta)
            except MalformedMessage as exc:
                raise Rejection(exc.reason, exc.detail) from None
            if meta.federation != self.config.federation:
                raise Rejection("wrong_federation", f"update is for {meta.federation!r}")
            if self.config.verify_identity and delivery.user_id != meta.participant:
                raise Rejection(
                    "forged",
                    f"claims participant {meta.participant!r}, sent by broker user "
                    f"{delivery.user_id!r}",
                )
            if meta.update_id in current.pending:
                # Already folded in this round: hold this copy too and ack it with the rest.
                current.pending[meta.update_id].append(delivery)
                delivery.release_body()
                return
            if await asyncio.to_thread(self.ledger.has_update, meta.update_id):
                raise Rejection("duplicate", f"update {meta.update_id} is already committed")
            current.admit(meta)
            deltas = await asyncio.to_thread(
                check_tensors, decoded.tensors, spec, self.config.max_update_norm
            )
            await asyncio.to_thread(current.fold, meta, deltas, delivery)
            del decoded, deltas  # views into the body: let it go until the commit acks it
            delivery.release_body()
            self.observer.update_seen(meta.participant, True, None)
        except Rejection as rejection:
            await self._reject(delivery, meta, rejection)

    async def _reject(
        self, delivery: Delivery, meta: UpdateMeta | None, rejection: Rejection
    ) -> None:
        """Copy to the DLQ with the reason, record, then ack: nothing is lost, nothing blocks."""
        headers = dict(delivery.headers)
        headers["x-fedq-reason"] = rejection.header()
        await self.transport.publish(
            "",
            self.topology.rejected,
            delivery.body,
            message_id=delivery.message_id,
            type=delivery.type,
            headers=headers,
        )
        await asyncio.to_thread(
            self.ledger.record_rejection,
            meta.update_id if meta else delivery.message_id,
            meta.participant if meta else None,
            meta.round if meta else None,
            rejection.reason,
            rejection.detail,
        )
        try:
            await delivery.ack()
        except TransportError as exc:  # redelivered later and rejected again: DLQ holds a copy
            log.warning("ack of a rejected update failed: %s", exc)
        log.info("rejected update: %s", rejection.header())
        self.observer.update_seen(meta.participant if meta else None, False, rejection.reason)

    async def _commit(self, current: QuorumRound, reason: CloseReason) -> tuple[Weights, int]:
        version = current.version + 1
        mean = await asyncio.to_thread(current.accumulator.mean)
        weights = await asyncio.to_thread(
            apply_mean_delta, current.model, mean, self.config.server_lr
        )
        metrics = await asyncio.to_thread(self.app.evaluate, weights) or {}
        path = await asyncio.to_thread(
            save_checkpoint, self.config.state_dir / "models", version, weights
        )
        record = VersionRecord(
            version=version,
            round=current.number,
            closed_by=reason,
            total_weight=current.accumulator.total_weight,
            opened_at=current.opened_wall,
            committed_at=time.time(),
            checkpoint=str(path),
            metrics=metrics,
        )
        await asyncio.to_thread(self.ledger.commit_version, record, current.records)
        # Committed: from here a redelivery of these updates is a duplicate, never re-applied.
        for update_id, deliveries in current.pending.items():
            for delivery in deliveries:
                try:
                    await delivery.ack()
                except TransportError as exc:  # its channel closed: the broker redelivers it
                    log.warning(
                        "ack of committed update %s failed (%s); it will come back as a duplicate",
                        update_id,
                        exc,
                    )
        await self._publish_control(
            ROUND_CLOSED,
            RoundClosed(
                federation=self.config.federation,
                round=current.number,
                version=version,
                reason=reason,
                contributors=current.contributors,
            ),
        )
        self.observer.round_committed(
            RoundHistory(
                version=version,
                round=current.number,
                closed_by=reason,
                n_updates=len(current.records),
                participants=current.contributors,
                rejected={},
                seconds=record.committed_at - record.opened_at,
                metrics=metrics,
            )
        )
        return weights, version

    async def _finish(self, version: int) -> None:
        last = await asyncio.to_thread(self.ledger.last_version)
        done = FederationDone(
            federation=self.config.federation,
            rounds_completed=last.round if last else 0,
            model_version=version,
            metrics=last.metrics if last else {},
        )
        await self._publish_control(FEDERATION_DONE, done)

    async def _reject_late(
        self, deliveries: AsyncIterator[Delivery], spec: ModelSpec, version: int
    ) -> None:
        """After the last round, refuse what still arrives (stragglers' work) while some
        participant is alive, at most ``linger_seconds``: a straggler's update is then
        counted and dead-lettered now rather than found by the next coordinator."""
        # A round that never opens (no tensors, nothing is ever folded): every update for a
        # real round is stale against it.
        closed = QuorumRound(
            number=self.config.rounds + 1,
            version=version,
            model={},
            quorum=1,
            min_quorum=1,
            deadline_seconds=self.config.linger_seconds,
        )
        deadline = time.monotonic() + self.config.linger_seconds
        while (left := deadline - time.monotonic()) > 0:
            everyone_left = self._alive() == 0
            try:
                delivery = await asyncio.wait_for(anext(deliveries), timeout=min(left, 0.5))
            except TimeoutError:
                if everyone_left:  # and half a second passed with nothing left to refuse
                    return
                continue
            await self._handle(delivery, closed, spec)

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
                    await self._on_control(event)
                with contextlib.suppress(TransportError):  # from before a reconnect: harmless
                    await delivery.ack()

    async def _on_control(self, event: ControlMessage) -> None:
        if isinstance(event, Join):
            self.last_seen[event.participant] = time.time()
            # Its queue may have been bound after the fanout: send it the model directly.
            await self._publish_model("", self.topology.model_queue(event.participant))
        elif isinstance(event, Heartbeat):
            self.last_seen[event.participant] = time.time()
        elif isinstance(event, Leave):
            self.last_seen.pop(event.participant, None)
        self.observer.participants_alive(self._alive())

    def _alive(self) -> int:
        now = time.time()
        return sum(now - seen <= self.config.liveness_seconds for seen in self.last_seen.values())

    async def _publish_model(self, exchange: str, routing_key: str) -> None:
        """The current model: to every participant (fanout) or one queue (default exchange)."""
        if self._model_meta is None:
            return  # no round open yet: the participant gets the model when one opens
        version = self._model_meta.version
        await self.transport.publish(
            exchange,
            routing_key,
            self._model_body,
            message_id=f"{self.config.federation}-v{version}",
            type=MESSAGE_TYPES["model"],
            headers={"federation": self.config.federation, "version": version},
        )

    # --------------------------------------------------------------- result
    def _result(self, started: float) -> FederationResult:
        """Counts come from the ledger, so they cover every run of this state dir."""
        history = self.ledger.history()
        rejected = self.ledger.rejection_counts()
        last = history[-1] if history else None
        return FederationResult(
            federation=self.config.federation,
            rounds_completed=len(history),
            model_version=last.version if last else 0,
            updates_incorporated=self.ledger.count_updates(),
            updates_rejected=sum(rejected.values()),
            rejected_by_reason=rejected,
            duplicates=rejected.get("duplicate", 0),
            final_metrics=last.metrics if last else {},
            wall_seconds=time.monotonic() - started,
            state_dir=str(self.config.state_dir),
            history=[h.__dict__ for h in history],
        )
