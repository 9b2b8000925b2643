"""The coordinator process: the loop, restore, open, dispatch and commit.

Per version: open (publish the model) -> collect: each delivery goes through the intake and
is folded, counted as a duplicate, or dead-lettered -> the mode says it may close ->
commit: aggregate, server step, evaluate, checkpoint (model and optimizer state), ledger,
ack the held deliveries, announce. Cancelling :meth:`Coordinator.run` (SIGINT) acks
nothing that is not committed: the broker redelivers it to the next coordinator, which
resumes from the ledger's last version.

Each concern has its room: the checks (:mod:`.intake`), what is admitted and when a version
closes (:mod:`.modes`), the version being made (:mod:`.version`), taking deliveries into it
(:mod:`.collect`), settling what is not folded (:mod:`.settle`), who is alive
(:mod:`.membership`), what goes out (:mod:`.publish`), the maths (:mod:`.strategies`), and
whoever watches (:mod:`.observers`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedq.coordinator.app import CoordinatorApp
from fedq.coordinator.assembly import Assembler
from fedq.coordinator.checkpoint import commit_checkpoint, map_checkpoint, stage_checkpoint
from fedq.coordinator.collect import Collector
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.evidence import Evidence
from fedq.coordinator.federation_lock import LOCK_GRACE_SECONDS, take_the_federation
from fedq.coordinator.headroom import Headroom
from fedq.coordinator.held import HeldDeliveries
from fedq.coordinator.intake import Intake
from fedq.coordinator.ledger import FINISHED_AT
from fedq.coordinator.membership import Membership
from fedq.coordinator.modes import CloseReason, OpenVersion, make_mode
from fedq.coordinator.observers import CommitTimings, CoordinatorObserver, Observers
from fedq.coordinator.publish import Publisher
from fedq.coordinator.records import VersionRecord, summary_of
from fedq.coordinator.remedy import Remedy
from fedq.coordinator.result import FederationResult, federation_result
from fedq.coordinator.settle import Settler
from fedq.coordinator.stall import StallWatch
from fedq.coordinator.state_dir import StateDir
from fedq.coordinator.strategies import AggregationContext
from fedq.coordinator.strategy import compose_strategy
from fedq.coordinator.version import Version, check_finite
from fedq.messages.codec import Weights, spec_of
from fedq.messages.schema import FederationDone, RoundClosed, wire_metrics
from fedq.messages.topology import FEDERATION_DONE, ROUND_CLOSED, Topology
from fedq.messages.transport import Delivery, Transport
from fedq.runtime.failpoints import failpoint
from fedq.runtime.supervise import alongside

log = logging.getLogger("fedq.coordinator")

#: Update bodies the broker may push ahead of the one being checked.
UPDATES_IN_FLIGHT = 4


@dataclass(frozen=True)
class Committing:
    """A version collected, its next model published before its commit is durable: what
    :meth:`Coordinator._make_durable` needs of it. Not its aggregation, let go before the
    next model goes out (its buffers are model-sized)."""

    window: OpenVersion
    held: HeldDeliveries  # the deliveries to ack once committed
    settled: Counter[str]  # what it refused, by reason
    reason: CloseReason
    staged: Path  # the next model's checkpoint, written, not yet durable nor in place
    aggregate_seconds: float
    stage_seconds: float


async def _finished(committing: asyncio.Task[None] | None, *, cancel: bool = False) -> None:
    """Wait for a version's commit to end, raising what it raised; with ``cancel``, end it
    first unless it ended (a run that stops acks nothing it has not committed)."""
    if committing is None:
        return
    if not cancel:
        await committing
        return
    if not committing.done():
        committing.cancel()
    for outcome in await asyncio.gather(committing, return_exceptions=True):
        if isinstance(outcome, Exception):
            log.error("the commit under way failed: %s", outcome)


class Coordinator:
    def __init__(
        self,
        config: CoordinatorConfig,
        app: CoordinatorApp,
        transport: Transport,
        observers: Sequence[CoordinatorObserver] = (),
        state: StateDir | None = None,
        lock_wait: float = LOCK_GRACE_SECONDS,
    ) -> None:
        """``state``: the state dir already opened (:meth:`StateDir.open`), as the CLI does
        before it connects; else it is opened here. Either way this coordinator holds it
        until :meth:`run` ends. ``lock_wait``: how long to wait for the federation's lock
        on the broker before refusing to run (longer for a standby taking over)."""
        self.config = config
        self.lock_wait = lock_wait
        self.app = app
        self.transport = transport
        self.topology = Topology(
            config.federation,
            config.updates_queue,
            config.updates_queue_bytes,
            config.dead_letter_bytes,
        )
        self.observers = Observers(observers)
        self.mode = make_mode(config)
        self.state = state or StateDir.open(config.state_dir, config.federation)
        self.ledger = self.state.ledger
        try:
            #: The federation's secret seed: differential privacy's noise, client sampling.
            self.seed = self._dp_seed()
            self.strategy = compose_strategy(config, self.seed)
        except BaseException:
            self.state.close()
            raise
        self.publisher = Publisher(config, transport, self.topology)
        self.membership = Membership(
            config, transport, self.topology, self.publisher, self.observers
        )
        evidence = Evidence(config, transport, self.topology, self.observers)
        self.settler = Settler(evidence, self.ledger, self.observers)
        self.remedy = Remedy(config)
        #: The model and version :meth:`prepare` found, once it ran.
        self._start: tuple[Weights, int] | None = None

    def _dp_seed(self) -> int:
        """The secret seed of differential privacy's noise, kept with the ledger so that a
        version redone after a crash gets the very same noise."""
        seed = self.ledger.get_meta("dp_seed")
        if seed is None:
            seed = str(secrets.randbits(63))
            self.ledger.set_meta("dp_seed", seed)
        return int(seed)

    # ----------------------------------------------------------------- loop
    async def run(self) -> FederationResult:
        started = time.monotonic()
        try:
            # Every local check first: nothing is declared for a coordinator refused.
            weights, version = await self.prepare()
            await take_the_federation(
                self.transport, self.topology, self.config.federation, self.lock_wait
            )
            await self.topology.declare_core(self.transport)
            self.strategy.log_held_memory(self.config, weights)
            # The control consumer beside the collection, and the federation's lock beside
            # both: if either dies, or the lock is lost, so does the run.
            collecting = alongside(
                self._collect_all(weights, version), self.membership.serve(), "control"
            )
            await alongside(collecting, self.transport.held_lost(), "the federation's lock")
            return await asyncio.to_thread(federation_result, self.ledger, self.config, started)
        finally:
            # Let the federation go with the run (a transport may outlive it), then the dir.
            await self.transport.release(self.topology.lock)
            await asyncio.to_thread(self.state.close)

    async def _collect_all(self, weights: Weights, version: int) -> None:
        """Every version from ``version`` on, then the end of the federation."""
        # Up to K deliveries are held until the commit acks them, their bodies released,
        # which takes them out of the prefetch; every other one is settled as soon as it is
        # checked. So the prefetch bounds only the bodies in memory: a few keep the pipe
        # full, whatever K (memory independent of K).
        async with self.transport.consume(
            self.topology.updates, prefetch=UPDATES_IN_FLIGHT
        ) as deliveries:
            collector = self._collector(deliveries, weights)
            committing: asyncio.Task[None] | None = None
            try:
                while version < self.config.rounds:
                    weights, version, committing = await self._make_version(
                        weights, version, collector, committing
                    )
                await _finished(committing)
                committing = None
                await self._finish(version)
                await collector.refuse_unfinished(version)
                if self.config.linger_seconds > 0:
                    await collector.refuse_late(version, self.membership.alive)
            finally:
                await _finished(committing, cancel=True)
                await collector.aclose()
                await self.publisher.aclose()

    def _collector(self, deliveries: AsyncIterator[Delivery], weights: Weights) -> Collector:
        """The intake and the assembler, made once the model's shapes are known."""
        config = self.config
        intake = Intake(
            config.federation,
            spec_of(weights),
            self.ledger.digest_of,
            verify_identity=config.verify_identity,
            max_bytes=config.max_update_bytes,
            max_norm=config.max_update_norm,
            roster=config.participant_roster,
        )
        assembler = Assembler(
            config.state_dir / "spool",
            intake.spec,
            max_bytes=intake.max_bytes,
            max_norm=config.max_update_norm,
            max_streams=config.max_streams,
            timeout_seconds=config.chunk_timeout,
            chunk_bytes=config.chunk_bytes,
            max_per_participant=config.max_streams_per_participant,
        )
        collector = Collector(
            config, deliveries, intake, assembler, self.settler, self.publisher, self.observers
        )
        collector.watch = StallWatch(self.membership.alive_ids, self.observers.version_stalled)
        return collector

    async def prepare(self) -> tuple[Weights, int]:
        """The model to continue from (the ledger's last version, or the app's v0), once
        the app's model signature matched the state dir's (:meth:`StateDir.restore`): the
        checks that need the app, before anything touches the broker. Done once."""
        if self._start is None:
            # Read once per state dir (the CLI may have restored it before connecting).
            restored = await asyncio.to_thread(
                self.state.restore, self.app, self.config.from_last_good
            )
            if restored.version > 0:
                log.info("resuming from model v%d", restored.version)
                self.strategy.optimizer.load_state(restored.optimizer_state)
            await asyncio.to_thread(self.remedy.restore, restored.weights, restored.version)
            self._start = (restored.weights, restored.version)
        return self._start

    # ------------------------------------------------------------- versions
    async def _make_version(
        self,
        weights: Weights,
        number: int,
        collector: Collector,
        committing: asyncio.Task[None] | None,
    ) -> tuple[Weights, int, asyncio.Task[None]]:
        """Open a version on model ``number``, collect it, commit it: model ``number + 1``,
        and the task that makes its commit durable.

        ``committing`` makes model ``number`` durable (:meth:`_make_durable`) while its
        model goes out: nothing of this version is collected before it is done."""
        window = self.mode.open(number)
        if self.config.sample_fraction is not None:
            window.sample = self.membership.draw(
                self.config.sample_size, f"{self.seed}:{number}", number
            )
        # Before the model goes out: Headroom.of reads every page of the model's mapping,
        # which the publish then lets go of as it reads them (after it, they stayed, and
        # the coordinator's peak at 500 MB grew by the model).
        headroom = await asyncio.to_thread(Headroom.of, weights)
        await self.publisher.open(window, weights)
        await _finished(committing)
        self.observers.version_opened(number, window.round)
        config = self.config
        aggregation = self.strategy.aggregator.start(
            AggregationContext(
                template=weights,
                capacity=window.quorum,
                memory_budget=int(config.robust_memory_mb * 2**20),
                spill_dir=config.state_dir / "spill",
                version=number + 1,
                max_weight_share=config.max_weight_share,
            )
        )
        per_user = config.max_updates_per_participant if config.verify_identity else None
        version = Version(
            window,
            self.mode,
            aggregation,
            max_per_user=per_user,
            headroom=headroom,
            early=config.folds_early,
        )
        version.cache = self.remedy.cache
        try:
            await self.publisher.progress(version, force=True)
            reason = await collector.collect(version)
            new, next_commit = await self._next_model(version, reason, weights)
        finally:
            version.close()  # its aggregation's files; its buffers go with it, below
        task = asyncio.create_task(
            self._make_durable(new, next_commit), name=f"commit-v{number + 1}"
        )
        return new, number + 1, task

    async def _next_model(
        self, version: Version, reason: CloseReason, weights: Weights
    ) -> tuple[Weights, Committing]:
        """Model ``version.number + 1``: the aggregate applied, checked, written to a
        checkpoint file not yet durable and served from it (the RAM it took goes to the
        next accumulator), which :meth:`_make_durable` then commits."""
        number = version.number + 1
        clock = time.perf_counter()
        delta = await asyncio.to_thread(
            self.remedy.result, version.aggregation, version.records, weights, version.number
        )
        await asyncio.to_thread(check_finite, delta, f"the aggregate of v{number}")
        new = await asyncio.to_thread(self.strategy.optimizer.step, weights, delta)
        del delta
        await asyncio.to_thread(check_finite, new, f"model v{number}")
        aggregated = time.perf_counter()
        staged = await asyncio.to_thread(
            stage_checkpoint, self.config.state_dir / "models", new, self.strategy.optimizer.state()
        )
        new = await asyncio.to_thread(map_checkpoint, staged)
        staged_at = time.perf_counter()
        return new, Committing(
            version.window,
            version.held,
            version.settled,
            reason,
            staged,
            aggregated - clock,
            staged_at - aggregated,
        )

    async def _make_durable(self, new: Weights, committing: Committing) -> None:
        """Commit model ``new`` (published already): its evaluation, its checkpoint made
        durable, then the ledger's transaction (the commit point); then ack the deliveries
        it includes and announce it."""
        window = committing.window
        number = window.version + 1
        evaluating = time.perf_counter()
        metrics = await self._evaluate(number, new)
        evaluated = time.perf_counter()
        path, checkpoint_sha256 = await asyncio.to_thread(
            commit_checkpoint, committing.staged, self.config.state_dir / "models", number
        )
        saved = time.perf_counter()
        failpoint("after_checkpoint")
        record = VersionRecord(
            version=number,
            round=window.round,
            closed_by=committing.reason,
            total_weight=window.total_weight,
            opened_at=window.opened_wall,
            committed_at=time.time(),
            checkpoint=str(path),
            metrics=metrics,
            epsilon=self.strategy.epsilon(number),
        )
        head = await asyncio.to_thread(
            self.ledger.commit_version, record, window.records, checkpoint_sha256
        )
        await asyncio.to_thread(self.remedy.committed)
        # Logged so the chain's head is also recorded outside the ledger (fedq audit).
        log.info("committed v%d, ledger chain %s", number, head)
        failpoint("after_ledger_commit")
        self.observers.commit_timed(
            CommitTimings(
                version=number,
                aggregate=committing.aggregate_seconds,
                evaluate=evaluated - evaluating,
                checkpoint=committing.stage_seconds + saved - evaluated,
                ledger=time.perf_counter() - saved,
            )
        )
        # Committed: from here a redelivery of these updates is a duplicate, never re-applied.
        await committing.held.ack_all()
        await self._announce(window, committing.settled, record)
        failpoint("between_versions")

    async def _evaluate(self, number: int, model: Weights) -> dict[str, float]:
        """The app's evaluation of version ``number`` (``--evaluate-every``: empty when
        this version is not one to evaluate, or the app does not evaluate)."""
        if not self.config.evaluates(number):
            return {}
        return await asyncio.to_thread(self.app.evaluate, model) or {}

    async def _announce(
        self, window: OpenVersion, settled: Counter[str], record: VersionRecord
    ) -> None:
        """A committed version: ``round.closed`` (round modes) and the observers."""
        if window.round is not None:
            await self.publisher.control(
                ROUND_CLOSED,
                RoundClosed(
                    federation=self.config.federation,
                    round=window.round,
                    version=record.version,
                    reason=record.closed_by,
                    contributors=window.contributors,
                ),
            )
        self.observers.version_committed(summary_of(record, window.records, dict(settled)))

    async def _finish(self, version: int) -> None:
        last = await asyncio.to_thread(self.ledger.last_version)
        done = FederationDone(
            federation=self.config.federation,
            rounds_completed=version,
            model_version=version,
            metrics=wire_metrics(last.metrics) if last else {},
        )
        await self.publisher.control(FEDERATION_DONE, done)
        await asyncio.to_thread(self.ledger.set_meta, FINISHED_AT, str(time.time()))

    # --------------------------------------------------------------- result
