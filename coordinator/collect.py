"""Collecting: every delivery of the updates queue into the open version.

Each delivery goes through the intake; its verdict decides, in one place
(:meth:`Collector.dispatch`), whether it is folded, handed to the assembler (a chunk of a
large update), or settled (a duplicate or a refusal). Between deliveries the collector
keeps the clocks: the version's deadline, chunked updates that stopped coming
(``incomplete``), and held deliveries that must go back to the queue before the broker's
``consumer_timeout`` (see :class:`~.held.HeldDeliveries`).

The intake and the assembler live as long as the coordinator's consumer: made once the
model's shapes are known, they outlast versions (a chunked update may start under one
version and complete under the next).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from fedq.coordinator.assembly import (
    Assembled,
    Assembler,
    ChunkBody,
    ChunkCopy,
    Outcome,
    Pending,
    Stream,
)
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.intake import Intake
from fedq.coordinator.membership import REMEMBERED_SLACK
from fedq.coordinator.modes import AfterTheLast, CloseReason
from fedq.coordinator.observers import Observers, UpdateSeen
from fedq.coordinator.publish import Publisher
from fedq.coordinator.settle import Settler
from fedq.coordinator.stale_notice import StaleNotice, keep_late_updates
from fedq.coordinator.stall import StallWatch
from fedq.coordinator.verdicts import (
    Admission,
    Candidate,
    ChunkCandidate,
    Duplicate,
    Refused,
    Rejection,
    Settled,
    Verdict,
)
from fedq.coordinator.version import Update, Version
from fedq.messages.transport import Delivery, TransportError
from fedq.runtime.failpoints import failpoint

log = logging.getLogger("fedq.coordinator")

#: After the last version, how often the lingering refusal looks whether anyone is alive.
LINGER_POLL_SECONDS = 0.5
#: How often a version with no delivery looks whether it can still close (:mod:`.stall`).
STALL_POLL_SECONDS = 1.0
#: Participants left behind being sent the newest model at once (each a queue lookup on
#: the broker, maybe a model). They go beside the collection, never in its way: with
#: N = 1,000 and a quorum of 100, 900 updates a version can be refused as stale, and a
#: lookup each in turn held the collector for minutes. Past this many, a notice is left
#: out: the next version's fanout reaches that participant's queue anyway.
NOTICES_IN_FLIGHT = 8
#: Participants left behind named in a warning of their own per version; the others share
#: one line as the version closes (N = 1,000 with a quorum of 100 would otherwise log 900
#: lines a version).
NAMED_LEFT_BEHIND = 5


class Collector:
    def __init__(
        self,
        config: CoordinatorConfig,
        deliveries: AsyncIterator[Delivery],
        intake: Intake,
        assembler: Assembler,
        settler: Settler,
        publisher: Publisher,
        observers: Observers,
        watch: StallWatch | None = None,
    ) -> None:
        self.config = config
        self.watch = watch
        self.deliveries = deliveries
        self.intake = intake
        self.assembler = assembler
        self.settler = settler
        self.publisher = publisher
        self.observers = observers
        #: Participants whose updates keep being refused as stale (:mod:`.stale_notice`).
        self.stale = StaleNotice(remember=config.participants + REMEMBERED_SLACK)
        #: The newest model on its way to participants left behind, by participant.
        self._notices: dict[str, asyncio.Task[None]] = {}
        #: Participants left behind named in a line each this version, and the others
        #: (:meth:`_warn_unnamed`).
        self._named_left_behind = 0
        self._unnamed_left_behind = 0
        self._some_unnamed: list[str] = []

    async def collect(self, version: Version) -> CloseReason:
        """Take deliveries into ``version`` until it may close; returns why it may."""
        # Held deliveries go back to the queue and are taken again before the broker's
        # consumer_timeout would close the channel (see HeldDeliveries).
        hold_for = self.config.consumer_timeout / 2
        while (reason := version.close_reason()) is None:
            returning = version.held.next_return(hold_for)
            wait = version.window.seconds_left()
            if self.watch is not None:
                if self.watch.check(version.window):  # the dashboard hears it at once
                    said = self.watch.said
                    version.cannot_close = None if said is None else said.describe()
                    await self.publisher.progress(version, force=True)
                wait = min(wait, STALL_POLL_SECONDS)
            delivery = await self._next(wait, returning)
            if returning is not None and time.monotonic() >= returning:
                returned = await version.held.return_older_than(hold_for)
                log.info("returned %d held deliveries to the queue to take them again", returned)
            for stream, rejection in self.assembler.expired():
                await self._refuse_stream(version, stream, rejection)
            if delivery is not None:
                folded = await self.dispatch(version, delivery)
                await self.publisher.progress(version, force=folded)
        await self.settler.drain()  # all it took is settled before it commits
        self._warn_unnamed(version)
        if self.watch is not None:
            self.watch.resolved(version.number + 1)
        return reason

    async def _next(self, wait: float, returning: float | None) -> Delivery | None:
        """The next delivery, or None once ``wait`` seconds or the next clock (a stream's
        expiry, a held delivery's return) passed first."""
        for due in (self.assembler.next_expiry(), returning):
            if due is not None:
                wait = min(wait, due - time.monotonic())
        try:
            return await asyncio.wait_for(anext(self.deliveries), timeout=max(0.01, wait))
        except TimeoutError:
            return None

    async def dispatch(self, version: Version, delivery: Delivery) -> bool:
        """The intake's verdict on ``delivery``, carried out; returns whether an update was
        folded."""
        verdict = await self._check(delivery, version)
        match verdict:
            case Candidate():
                update = Update.of(verdict, delivery)
                try:
                    await self._fold(version, update)
                except Rejection as rejection:  # overflow: nothing of it was folded
                    await self._settle(version, Refused(rejection, verdict.meta), delivery)
                    return False
                return True
            case ChunkCandidate():
                return await self._take_chunk(version, verdict, delivery)
            case Duplicate(of="held"):
                size = len(delivery.body)
                kept = version.held.replace(verdict.meta.update_id, delivery, verdict.chunk)
                if kept is not None:  # None: a returned delivery, back, held again
                    await self._settle(version, verdict, kept, size)
            case _:
                await self._settle(version, verdict, delivery)
        return False

    async def _check(self, delivery: Delivery, into: Admission) -> Verdict:
        """The intake's verdict, in a worker thread; a delivery whose properties the
        client could not decode is refused before its body is looked at: who sent it
        (``user_id``) is unknown, and so is whether it may be trusted."""
        if delivery.undecodable is not None:
            return Refused(Rejection("undecodable_properties", delivery.undecodable), None)
        return await asyncio.to_thread(self.intake.check, delivery.body, delivery.user_id, into)

    async def _take_chunk(
        self, version: Version, candidate: ChunkCandidate, delivery: Delivery
    ) -> bool:
        """Spool a chunk; fold its update when it is the last one and the whole passes.
        Returns whether an update was folded."""
        size = len(delivery.body)
        try:
            outcome = await asyncio.to_thread(self._spool, version, candidate, delivery)
        except Rejection as rejection:
            await self._settle(version, Refused(rejection, candidate.meta), delivery)
            return False
        delivery.release_body()  # spooled
        if isinstance(outcome, ChunkCopy):
            copy = Duplicate(candidate.meta, "in assembly", candidate.chunk.index)
            await self._settle(version, copy, outcome.replaced, size)
            return False
        if not isinstance(outcome, Assembled):
            return False
        stream = outcome.stream
        try:
            try:
                pieces = await asyncio.to_thread(self.assembler.finish, stream)
                admitted = version.readmit(stream.meta)
                update = Update(
                    stream.meta,
                    pieces,
                    admitted,
                    stream.digest,
                    stream.deliveries(),
                    stream.size,
                    stream.copies(),
                )
                await self._fold(version, update)  # or overflow, with nothing folded
            except Rejection as rejection:
                self.assembler.remember(stream.update_id, rejection)
                await self._refuse_stream(version, stream, rejection)
                return False
            return True
        finally:
            stream.close()

    def _spool(self, version: Version, candidate: ChunkCandidate, delivery: Delivery) -> Outcome:
        """Spool a chunk (in a worker thread), and fold it at once if the version folds its
        update's chunks as they come: a fresh update whose first chunk came while this
        version was open (:mod:`~.strategies.early_mean`)."""
        outcome = self.assembler.add(candidate, delivery)
        early = version.early
        if early is None or not isinstance(outcome, Pending | Assembled):
            return outcome
        key = outcome.stream.update_id
        if len(outcome.stream.chunks) == 1 and candidate.admitted.staleness == 0:
            early.begin(key, candidate.meta.num_examples, candidate.admitted.scale)
        early.fold(key, ChunkBody(delivery.body, self.assembler.spec), candidate.sum_squares)
        return outcome

    async def _fold(self, version: Version, update: Update) -> None:
        record = await version.fold(update)
        self.stale.folded(record.participant)
        failpoint("collecting")
        self.observers.update_seen(
            UpdateSeen(
                record.participant,
                True,
                None,
                record.base_version,
                record.staleness,
                record.size,
                dict(record.metrics),
            )
        )

    async def _settle(
        self, version: Version, verdict: Settled, delivery: Delivery, size: int | None = None
    ) -> None:
        version.count(verdict)
        await self.settler.settle(verdict, delivery, version.number, size)
        if isinstance(verdict, Refused):
            await self._left_behind(version, verdict)

    async def _refuse_stream(self, version: Version, stream: Stream, rejection: Rejection) -> None:
        if version.early is not None:
            version.early.drop(stream.update_id)
        refused = Refused(rejection, stream.meta)
        version.count(refused)
        await self.settler.settle_stream(stream, rejection, version.number)
        await self._left_behind(version, refused)

    async def _left_behind(self, version: Version, refused: Refused) -> None:
        """A participant whose updates keep being refused as stale is sent the current
        model (what it trains on next) and named in a warning (:mod:`.stale_notice`)."""
        meta = refused.meta
        if refused.reason != "stale" or meta is None or not self.publisher.has_model:
            return
        notice = self.stale.refused(meta.participant)
        if not notice.tell:
            return
        if notice.warn and self._named_left_behind < NAMED_LEFT_BEHIND:
            self._named_left_behind += 1
            log.warning(
                "participant %r: its last %d updates were refused as stale (the latest on "
                "v%d, %d versions behind v%d); sent it model v%d to train on. %s",
                meta.participant,
                notice.streak,
                meta.base_version,
                version.number - meta.base_version,
                version.number,
                version.number,
                keep_late_updates(self.config.mode),
            )
        elif notice.warn:
            self._unnamed_left_behind += 1
            if len(self._some_unnamed) < NAMED_LEFT_BEHIND:
                self._some_unnamed.append(meta.participant)
        self._tell_newest(meta.participant)
        self.observers.participant_left_behind(meta.participant, version.number, notice.streak)

    def _warn_unnamed(self, version: Version) -> None:
        """One line for the participants left behind past the first few named this
        version, then start counting again."""
        unnamed, some = self._unnamed_left_behind, self._some_unnamed
        self._named_left_behind = self._unnamed_left_behind = 0
        self._some_unnamed = []
        if unnamed:
            log.warning(
                "%d more participants' updates were refused as stale twice or more in a row "
                "while v%d was open (%s%s); each was sent model v%d to train on. %s",
                unnamed,
                version.number,
                ", ".join(repr(p) for p in some),
                ", ..." if unnamed > len(some) else "",
                version.number,
                keep_late_updates(self.config.mode),
            )

    def _tell_newest(self, participant: str) -> None:
        """Send ``participant`` the newest model beside the collection (at most one on its
        way per participant, :data:`NOTICES_IN_FLIGHT` in all)."""
        if participant in self._notices or len(self._notices) >= NOTICES_IN_FLIGHT:
            return
        task = asyncio.create_task(self._send_newest(participant), name=f"notice {participant}")
        self._notices[participant] = task

        def done(task: asyncio.Task[None]) -> None:
            self._notices.pop(participant, None)
            if not task.cancelled() and (error := task.exception()) is not None:
                log.warning("could not send %r the newest model: %s", participant, error)

        task.add_done_callback(done)

    async def aclose(self) -> None:
        """Stop sending models to participants left behind, and stop settlements still
        under way (the run is ending)."""
        notices = list(self._notices.values())
        for task in notices:
            task.cancel()
        await asyncio.gather(*notices, return_exceptions=True)
        await self.settler.aclose()

    async def _send_newest(self, participant: str) -> None:
        """Make sure ``participant``'s queue holds the current model: it keeps only the
        newest message, so a model waiting there is already the newest (the fanout put it
        there), and only an empty queue needs it sent, as a join's answer does. None sent
        to a queue that is not there (a sender that named another participant)."""
        queue = self.publisher.topology.model_queue(participant)
        try:
            waiting = await self.publisher.transport.queue_depth(queue)
        except TransportError:
            return
        if not waiting:
            await self.publisher.model("", queue)

    async def refuse_unfinished(self, last: int) -> None:
        """After the last version: chunked updates still in assembly will never be folded."""
        for stream in self.assembler.drain():
            rejection = Rejection(
                "stale",
                f"update was still in assembly when the last version, v{last}, was committed",
            )
            await self.settler.settle_stream(stream, rejection, last)

    async def refuse_late(self, last: int, alive: Callable[[], int]) -> None:
        """After the last version, refuse what still arrives (stragglers' work) while some
        participant is ``alive``, at most ``linger_seconds``: a straggler's update is then
        counted and dead-lettered now rather than found by the next coordinator."""
        await self._refuse_late(last, alive)
        await self.settler.drain()

    async def _refuse_late(self, last: int, alive: Callable[[], int]) -> None:
        finished = AfterTheLast(last)
        deadline = time.monotonic() + self.config.linger_seconds
        while (left := deadline - time.monotonic()) > 0:
            everyone_left = alive() == 0
            try:
                delivery = await asyncio.wait_for(
                    anext(self.deliveries), timeout=min(left, LINGER_POLL_SECONDS)
                )
            except TimeoutError:
                if everyone_left:  # and half a second passed with nothing left to refuse
                    return
                continue
            verdict = await self._check(delivery, finished)
            assert isinstance(verdict, Duplicate | Refused), "nothing is admitted now"
            await self.settler.settle(verdict, delivery, last)
