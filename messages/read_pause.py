"""A connection's socket reads, paused while its consumer has bodies enough to work on: TCP
holds the broker back, instead of a small prefetch.

Why: the coordinator holds every update's deliveries unacked until its version commits,
and RabbitMQ counts a consumer's unacked deliveries against its prefetch. With the small
prefetch that bounds its memory (4 bodies), a consumer was full after 4 chunks and was
replaced by a new one (:class:`~.amqp._Inbox`): at P = 10M and 10 participants, about 50
basic.consume and basic.cancel a round, each a command in a quorum queue's log, and the
coordinator taking the last chunks of a round 0.7 s after the tenth update was confirmed.
With reads paused instead, the consumer's prefetch can be large (no replacement), and the
bodies read but not yet released stay as few as before: what the broker sends meanwhile
waits in its own memory (a reference to the message it holds anyway) and the socket's
buffers. Measured in bench/README ("Where a round's time goes").

What must stay true:
- Only a connection that carries nothing but one consumer's deliveries is paused (the
  coordinator's, ``consumers_apart``): a publish confirm or an RPC reply behind a paused
  read would wait for the consumer, and the consumer may be waiting for it.
- A pause never outlasts :func:`longest_pause` of the connection's heartbeat: aiormq
  closes a connection it has read nothing from for three heartbeat intervals. After that
  long the reads resume, and the next body read pauses them again (one more body per
  pause of a consumer that does not take its deliveries).
- Once the consumer waits for a delivery with none queued, a pause ends within
  :data:`WAITING_PAUSE`: what it holds then either lets go within milliseconds (a refused
  body's dead-letter copy being confirmed) or never does (bodies it keeps while it asks
  for more, or a count gone wrong), and it cannot go on without a delivery. A fresh-clone
  CI run with these pauses failed 1 of 5 runs with a federation that made no first version
  in 30 s, a stall never reproduced outside the suite; whatever its cause, a pause that
  runs out now costs a second, and its warning says what held it.
- A new connection (a reconnect) starts with its reads on.
- A body is counted from the moment its basic.deliver frame leaves the socket
  (:class:`DeliverFrames`), not when aiormq hands the assembled message over: aiormq's
  frame reader runs ahead of the channel that assembles bodies and of the consumer
  callbacks it schedules, and counting at the callback let a flood of 1.2 MB garbage
  bodies be read far past the bound (210 MiB against 160 in tests/hostile).
- The pause is this module's own, not the transport's flag: asyncio's stream reader
  pauses and resumes the same transport for its buffer, and its resume used to undo a
  pause taken meanwhile (:class:`_ReadGate` keeps both reasons apart).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiormq.abc
from aiormq.connection import TransportFactory
from aiormq.exceptions import AMQPConnectionError
from pamqp import commands as spec
from yarl import URL

from fedq.messages.frame_stream import FrameStream, open_frame_stream

log = logging.getLogger("fedq.amqp")

#: The longest a pause lasts before reads resume for a body, with the default heartbeat.
LONGEST_PAUSE = 20.0
#: The longest a pause lasts once its consumer waits for a delivery with none queued.
WAITING_PAUSE = 1.0


def longest_pause(url: URL) -> float:
    """How long reads may pause on a connection to ``url``: :data:`LONGEST_PAUSE`, or a
    quarter of the time aiormq waits for a frame before it gives the connection up
    (``(heartbeat + 1) x 3`` seconds) where a short ``heartbeat`` in the URL makes that
    sooner. A heartbeat of 0 (off) sets no such time."""
    try:
        heartbeat = int(url.query.get("heartbeat", "60"))
    except ValueError:
        return LONGEST_PAUSE
    if heartbeat <= 0:
        return LONGEST_PAUSE
    return min(LONGEST_PAUSE, (heartbeat + 1) * 3 / 4)


class _ReadGate:
    """A socket transport read only while neither asyncio's stream reader (its buffer
    full) nor :class:`PausableReads` holds it paused: the transport's own
    ``pause_reading``/``resume_reading``, which the stream reader calls, are replaced on the
    instance by the reader's half of the gate."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._pause = transport.pause_reading
        self._resume = transport.resume_reading
        self._buffer_full = False
        self.held = False
        transport.pause_reading = self._buffer_pause  # type: ignore[method-assign]
        transport.resume_reading = self._buffer_resume  # type: ignore[method-assign]

    def _buffer_pause(self) -> None:
        self._buffer_full = True
        self.apply()

    def _buffer_resume(self) -> None:
        self._buffer_full = False
        self.apply()

    def apply(self) -> None:
        if self.transport.is_closing():
            return
        paused = self._buffer_full or self.held
        if paused and self.transport.is_reading():
            self._pause()
        elif not paused and not self.transport.is_reading():
            self._resume()


class PausableReads(TransportFactory):
    """aiormq's transport factory for a connection (TCP, or TLS for amqps://, as aiormq
    picks), keeping the socket transport it made last so that its reads can be paused;
    its frames are read by a :class:`~.frame_stream.FrameStream`."""

    def __init__(self) -> None:
        self._gate: _ReadGate | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._longest = LONGEST_PAUSE
        self._paused_at = 0.0
        #: Pauses that lasted :func:`longest_pause` and were ended by the clock, not by a
        #: body let go: a consumer that did not take its deliveries for that long.
        self.ran_out = 0
        #: What holds the reads paused, in words, for the warning when a pause runs out
        #: (set by the consumer that paces them).
        self.holding: Callable[[], str] = lambda: "bodies in hand"

    async def create(  # type: ignore[override]
        self, url: URL, **kwargs: Any
    ) -> tuple[FrameStream, asyncio.StreamWriter]:
        """The connection, TCP or TLS (amqps://) as aiormq's own factories make it, with
        a :class:`~.frame_stream.FrameStream` for its protocol."""
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if url.scheme == "amqps" else None
        try:
            reader, writer = await open_frame_stream(url.host, url.port, ssl=ssl, **kwargs)
        except OSError as e:  # as aiormq's own factories
            raise AMQPConnectionError(*e.args) from e
        self.resume()  # whatever was paused was the old connection's
        self._gate = _ReadGate(writer.transport)  # type: ignore[arg-type]
        self._longest = longest_pause(url)
        return reader, writer

    @property
    def paused(self) -> bool:
        """Whether this holds the socket's reads paused now."""
        return self._resume is not None

    def pause(self) -> None:
        """Stop reading the socket, for at most :func:`longest_pause` seconds."""
        gate = self._gate
        if self._resume is not None or gate is None or gate.transport.is_closing():
            return
        gate.held = True
        gate.apply()
        loop = asyncio.get_running_loop()
        self._paused_at = loop.time()
        self._resume = loop.call_later(self._longest, self._run_out)

    def hurry(self, seconds: float) -> None:
        """End the pause under way within ``seconds``, if it would last longer."""
        timer = self._resume
        if timer is None:
            return
        loop = asyncio.get_running_loop()
        if timer.when() > loop.time() + seconds:
            timer.cancel()
            self._resume = loop.call_later(seconds, self._run_out)

    def _run_out(self) -> None:
        self.ran_out += 1
        log.warning(
            "a consumer held its bodies for %.1f s without letting one go (%s); reading "
            "its socket again (one more body)",
            asyncio.get_running_loop().time() - self._paused_at,
            self.holding(),
        )
        self.resume()

    def resume(self) -> None:
        if self._resume is None:
            return
        self._resume.cancel()
        self._resume = None
        gate = self._gate
        if gate is not None:
            gate.held = False
            gate.apply()


class DeliverFrames(asyncio.Queue[Any]):
    """An aiormq channel's queue of frames read for it, which calls ``on_deliver`` as the
    connection's frame reader queues a basic.deliver: a body is counted from its first
    frame, before aiormq's channel has assembled it (that reader runs ahead of the
    channel's, and of the consumer callbacks the channel schedules)."""

    on_deliver: Callable[[], None] | None = None

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item)
        if self.on_deliver is not None and isinstance(item[1], spec.Basic.Deliver):
            self.on_deliver()


def count_deliveries(channel: aiormq.abc.AbstractChannel) -> None:
    """Give a new aiormq channel a :class:`DeliverFrames` queue. Called as the connection
    registers the channel, right after making it: its frame reader (a task made then)
    has not run yet, so nothing has waited on or been put in the queue replaced."""
    frames = getattr(channel, "frames", None)
    if type(frames) is asyncio.Queue and frames.empty():
        channel.frames = DeliverFrames(maxsize=frames.maxsize)
