"""The coordinator process: the loop, restore, open, dispatch and commit.

Per version: open (publish the model) -> collect: each delivery goes through the intake and
is folded, counted as a duplicate, or dead-lettered -> the mode says it may close ->
commit (:mod:`.commit`): aggregate, server step, the next model staged in its checkpoint
and published, while beside it the checkpoint is made durable, the evaluation runs, the
ledger commits, the held deliveries are acked and the version announced. Cancelling
:meth:`Coordinator.run` (SIGINT) acks nothing that is not committed: the broker redelivers
it to the next coordinator, which resumes from the ledger's last version.

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
from collections.abc import AsyncIterator, Sequence

from fedq.coordinator.app import CoordinatorApp
from fedq.coordinator.assembly import Assembler
from fedq.coordinator.collect import Collector
from fedq.coordinator.commit import Commits, finished
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.evidence import Evidence
from fedq.coordinator.federation_lock import LOCK_GRACE_SECONDS, take_the_federation
from fedq.coordinator.headroom import Headroom
from fedq.coordinator.intake import Intake
from fedq.coordinator.ledger import FINISHED_AT
from fedq.coordinator.membership import Membership
from fedq.coordinator.modes import OpenVersion, make_mode
from fedq.coordinator.observers import CoordinatorObserver, Observers
from fedq.coordinator.publish import Publisher
from fedq.coordinator.remedy import Remedy
from fedq.coordinator.result import FederationResult, federation_result
from fedq.coordinator.settle import Settler
from fedq.coordinator.stall import StallWatch
from fedq.coordinator.state_dir import StateDir
from fedq.coordinator.strategies import AggregationContext
from fedq.coordinator.strategy import compose_strategy
from fedq.coordinator.version import Version
from fedq.messages.codec import Weights, spec_of
from fedq.messages.schema import FederationDone, wire_metrics
from fedq.messages.topology import FEDERATION_DONE, Topology
from fedq.messages.transport import Delivery, Transport
from fedq.runtime.supervise import alongside, beside, stopped

log = logging.getLogger("fedq.coordinator")

#: Update bodies the broker may push ahead of the one being checked.
UPDATES_IN_FLIGHT = 4


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
        self.commits = Commits(
            config, app, self.strategy, self.remedy, self.ledger, self.publisher, self.observers
        )
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
                await finished(committing)
                committing = None
                await self._finish(version)
                await collector.refuse_unfinished(version)
                if self.config.linger_seconds > 0:
                    await collector.refuse_late(version, self.membership.alive)
            finally:
                await finished(committing, cancel=True)
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

        ``committing`` makes model ``number`` durable (:meth:`.Commits.make_durable`) while its
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
        fanout = await self.publisher.open(window, weights)
        try:
            await finished(committing)
            self.observers.version_opened(number, window.round)
            version = self._version(window, weights, headroom)
            try:
                await self.publisher.progress(version, force=True)
                # Collected while the broker confirms the model (see Publisher.open).
                reason = await beside(collector.collect(version), fanout)
                await fanout  # a model the broker did not confirm is not one to build on
                new, next_commit = await self.commits.next_model(version, reason, weights)
            finally:
                version.close()  # its aggregation's files; its buffers go with it, below
        finally:
            await stopped(fanout)  # ended already, unless the collection failed
        task = asyncio.create_task(
            self.commits.make_durable(new, next_commit), name=f"commit-v{number + 1}"
        )
        return new, number + 1, task

    def _version(self, window: OpenVersion, weights: Weights, headroom: Headroom) -> Version:
        """The version ``window`` opens, its aggregation started on ``weights``."""
        config = self.config
        aggregation = self.strategy.aggregator.start(
            AggregationContext(
                template=weights,
                capacity=window.quorum,
                memory_budget=int(config.robust_memory_mb * 2**20),
                spill_dir=config.state_dir / "spill",
                version=window.version + 1,
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
        return version

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
