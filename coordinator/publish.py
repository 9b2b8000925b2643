"""What the coordinator publishes: the current model, and the control and progress
messages for participants and whoever watches.

The current model is the open version's: its weights (mapped from the version's
checkpoint, their pages let go as they are read, so that in RAM the coordinator holds the
accumulator of the next version, not also the model) and, when it fits in one message,
its encoded body. A chunked model is encoded again for each publish, one chunk at a time,
rather than kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fedq.coordinator.checkpoint import release_pages
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.modes import OpenVersion
from fedq.coordinator.version import Version
from fedq.messages.chunks import chunk_count, encode_chunks
from fedq.messages.codec import Weights, encode_message
from fedq.messages.schema import MESSAGE_TYPES, ModelMeta, RoundOpen, VersionProgress
from fedq.messages.topology import ROUND_OPEN, VERSION_PROGRESS, Topology
from fedq.messages.transport import Transport, TransportError
from fedq.runtime.failpoints import failpoint
from fedq.runtime.supervise import stopped

log = logging.getLogger("fedq.coordinator")

#: ``version.progress`` is sent at most this often, unless forced.
PROGRESS_INTERVAL = 1.0


class Publisher:
    def __init__(self, config: CoordinatorConfig, transport: Transport, topology: Topology) -> None:
        self.config = config
        self.transport = transport
        self.topology = topology
        self._model: tuple[ModelMeta, Weights] | None = None
        self._model_body: bytes | None = None
        #: One model publish at a time (:meth:`model`), so two copies of a chunked model
        #: (the fanout and a join's answer) never interleave in a participant's queue:
        #: bounded by bytes, it drops the oldest chunks first, which could then be the same
        #: index of both copies. In sequence, the newest copy always arrives whole.
        self._publishing_model = asyncio.Lock()
        self._progress_sent = 0.0
        #: The newest ``version.progress`` not yet handed to the broker, and the task
        #: that publishes it (:meth:`progress`).
        self._progress: VersionProgress | None = None
        self._progress_task: asyncio.Task[None] | None = None

    @property
    def has_model(self) -> bool:
        """Whether a version is open (before that, a join gets nothing)."""
        return self._model is not None

    async def open(self, window: OpenVersion, weights: Weights) -> asyncio.Task[None]:
        """Announce the version ``window`` opens (its round, in round modes) and start to fan
        its model out to every participant. Returns the fanout under way: it ends once the
        broker confirmed the model. The collection need not wait for it: an update on this
        model comes only after the model reached its participant, and waiting held back
        every update that came before the confirm (a persistent write to every model
        queue: median 28 ms, 18 to 50 ms, at P = 1M with 10 participant processes) while
        they queued up on the broker."""
        meta = ModelMeta(
            federation=self.config.federation,
            version=window.version,
            round=window.round,
            rounds_total=self.config.rounds,
            chunk_bytes=self.config.chunk_bytes,
            sampled=None if window.sample is None else sorted(window.sample),
        )
        self._model = (meta, weights)
        self._model_body = None
        if chunk_count(weights, self.config.chunk_bytes) == 1:
            self._model_body = await asyncio.to_thread(
                encode_message, meta, weights, self.config.codec
            )
        fanout = asyncio.create_task(
            self.model(self.topology.models, ""), name=f"fanout-v{window.version}"
        )
        if window.round is not None:
            try:
                await self.control(
                    ROUND_OPEN,
                    RoundOpen(
                        federation=self.config.federation,
                        round=window.round,
                        version=window.version,
                        quorum=window.quorum,
                        deadline_seconds=window.deadline_seconds,
                    ),
                )
            except BaseException:
                await stopped(fanout)
                raise
        return fanout

    async def _send_progress(self) -> None:
        while (message := self._progress) is not None:
            self._progress = None
            try:
                await self._publish_control(VERSION_PROGRESS, message)
            except TransportError as error:  # the collection's own calls will say so
                log.warning("could not publish version.progress: %s", error)
                return

    async def _progress_sent_all(self) -> None:
        """Wait until every ``version.progress`` so far was published (or given up, on a
        broker error, logged there). Any other error of the publishing task is raised
        here, to the caller, as it was when progress was published in the caller."""
        task = self._progress_task
        if task is not None:
            await asyncio.wait([task])
            task.result()

    async def aclose(self) -> None:
        """Stop publishing ``version.progress`` (the run is ending; watchers hear
        ``federation.done`` or nothing)."""
        task, self._progress_task = self._progress_task, None
        self._progress = None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def model(self, exchange: str, routing_key: str) -> None:
        """The current model: to every participant (fanout) or one queue (default exchange).

        One publish at a time, and the current model is read once the lock is held: a copy
        sent to one queue (a join's answer, a left-behind participant's notice, which run
        beside the versions) is then never an older model published after a newer one's
        fanout, which that queue, keeping only the newest message, would keep instead."""
        async with self._publishing_model:
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

    async def control(self, key: str, message: Any) -> None:
        """A message of the control exchange (``round.open``, ``federation.done`` ...),
        after every ``version.progress`` before it: watchers see them in order."""
        await self._progress_sent_all()
        await self._publish_control(key, message)

    async def _publish_control(self, key: str, message: Any) -> None:
        await self.transport.publish(
            self.topology.control,
            key,
            encode_message(message),
            type=MESSAGE_TYPES[message.kind],
        )

    async def progress(self, version: Version, *, force: bool) -> None:
        """``version.progress`` for whoever watches: at once when forced (a version opened,
        an update was folded), else at most once a second, so a flood costs no more.

        Published beside the caller, which does not wait for the broker's confirm: the
        collector calls it after each update it folds, and a confirm's round trip each
        time held the next delivery back (ten a round, serial, when the last updates of a
        round arrive together). One is published at a time; one made meanwhile replaces
        any still waiting (progress is a gauge: the newest says all), so at most one
        waits, and every other control message waits until it is out (:meth:`control`)."""
        now = time.monotonic()
        if not force and now - self._progress_sent < PROGRESS_INTERVAL:
            return
        self._progress_sent = now
        window = version.window
        self._progress = VersionProgress(
            federation=self.config.federation,
            mode=self.config.mode,
            version=window.version,
            round=window.round,
            accepted=window.counted,
            quorum=window.quorum,
            refused=version.refused,
            duplicates=version.duplicates,
            seconds_left=max(0.0, window.seconds_left(now)),
            rounds_total=self.config.rounds,
            cannot_close=version.cannot_close,
        )
        if self._progress_task is None or self._progress_task.done():
            self._progress_task = asyncio.create_task(self._send_progress(), name="progress")
