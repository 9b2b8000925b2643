"""A version's commit: its next model made (the aggregate applied, checked, staged in a
checkpoint file and served from it), then, beside the publish of that model, made durable
(the checkpoint fsynced and renamed into place, the evaluation, the ledger's transaction:
the commit point), its held deliveries acked and the version announced.

What must stay true: nothing is acked before the ledger's transaction; the next version
collects nothing before :func:`finished` says the commit ended; the aggregation is let go
before the next model goes out (:class:`Committing` holds none of it). What a crash in
between means: docs/architecture.md, "Exactly-once accounting".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fedq.coordinator.app import CoordinatorApp
from fedq.coordinator.checkpoint import commit_checkpoint, map_checkpoint, stage_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.held import HeldDeliveries
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.modes import CloseReason, OpenVersion
from fedq.coordinator.observers import CommitTimings, Observers
from fedq.coordinator.publish import Publisher
from fedq.coordinator.records import VersionRecord, summary_of
from fedq.coordinator.remedy import Remedy
from fedq.coordinator.strategy import Strategy
from fedq.coordinator.version import Version, check_finite
from fedq.messages.codec import Weights
from fedq.messages.schema import RoundClosed
from fedq.messages.topology import ROUND_CLOSED
from fedq.runtime.failpoints import failpoint

log = logging.getLogger("fedq.coordinator")


@dataclass(frozen=True)
class Committing:
    """A version collected, its next model published before its commit is durable: what
    :meth:`Commits.make_durable` needs of it. Not its aggregation, let go before the
    next model goes out (its buffers are model-sized)."""

    window: OpenVersion
    held: HeldDeliveries  # the deliveries to ack once committed
    settled: Counter[str]  # what it refused, by reason
    reason: CloseReason
    staged: Path  # the next model's checkpoint, written, not yet durable nor in place
    aggregate_seconds: float
    stage_seconds: float


async def finished(committing: asyncio.Task[None] | None, *, cancel: bool = False) -> None:
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


class Commits:
    """The commits of one coordinator's versions."""

    def __init__(
        self,
        config: CoordinatorConfig,
        app: CoordinatorApp,
        strategy: Strategy,
        remedy: Remedy,
        ledger: UpdateLedger,
        publisher: Publisher,
        observers: Observers,
    ) -> None:
        self.config = config
        self.app = app
        self.strategy = strategy
        self.remedy = remedy
        self.ledger = ledger
        self.publisher = publisher
        self.observers = observers

    async def next_model(
        self, version: Version, reason: CloseReason, weights: Weights
    ) -> tuple[Weights, Committing]:
        """Model ``version.number + 1``: the aggregate applied, checked, written to a
        checkpoint file not yet durable and served from it (the RAM it took goes to the
        next accumulator), which :meth:`make_durable` then commits."""
        new, staged, aggregate_seconds, stage_seconds = await asyncio.to_thread(
            self._make_next, version, weights
        )
        return new, Committing(
            version.window,
            version.held,
            version.settled,
            reason,
            staged,
            aggregate_seconds,
            stage_seconds,
        )

    def _make_next(self, version: Version, weights: Weights) -> tuple[Weights, Path, float, float]:
        """:meth:`next_model`'s work, in one worker thread: it is the whole of the critical
        path between a version's last update and the next model's publish, and with a hop
        to the event loop between its steps, each step waited for a core again on a busy
        machine. Returns the model, its staged file, and the seconds to aggregate and to
        stage."""
        number = version.number + 1
        clock = time.perf_counter()
        delta = self.remedy.result(version.aggregation, version.records, weights, version.number)
        check_finite(delta, f"the aggregate of v{number}")
        new = self.strategy.optimizer.step(weights, delta)
        del delta
        check_finite(new, f"model v{number}")
        aggregated = time.perf_counter()
        staged = stage_checkpoint(
            self.config.state_dir / "models", new, self.strategy.optimizer.state()
        )
        new = map_checkpoint(staged)
        return new, staged, aggregated - clock, time.perf_counter() - aggregated

    async def make_durable(self, new: Weights, committing: Committing) -> None:
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
