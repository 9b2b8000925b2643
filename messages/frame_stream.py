"""A connection's frames read from the socket as they come, and each large message body
received straight into the bytes object it is handed over as: one copy, out of the
kernel, where asyncio's stream reader and aiormq made five.

With :mod:`~.body_frames` alone, a body byte was copied by the socket's ``recv`` into a
new bytes object, by the stream reader into its buffer, twice by ``readexactly`` (a slice
of a bytearray, then ``bytes`` of it), and once more to join the body's frames. The stream
reader also paused and resumed the socket for every read of 256 KiB (its limit is 64 KiB)
and woke a coroutine three times a frame. Consuming 4 MiB messages from RabbitMQ took
3 to 4 ms of CPU each that way (bench/README.md, "Where a round's time goes").

:class:`FrameStream` is the connection's protocol instead (``asyncio.BufferedProtocol``,
over TCP or TLS): it parses frames out of a small read-ahead buffer, and once a content
header announces a body larger than that buffer, the body's frames are read by the
socket straight into a bytes object of the body's size (:mod:`~.unfilled`), each
frame's payload in one read with the end byte and the next frame's head that follow it
(they land where the next payload goes, and go on to the read-ahead buffer; the last
payload is read alone). The whole body then goes to aiormq as one ``ContentBody``, where
:func:`~.body_frames._read_content` takes it as it is. Handing it over as bytes copied
each body once more: 0.6 ms of CPU per 4 MiB body, 67 ms of the coordinator's round at
P = 10M with 10 participants (yappi, bench/README.md, "Where a round's time goes").

What must stay true:
- aiormq gets the same frames in the same order on each channel, and the same errors, as
  from :func:`~.body_frames._get_frame` over a stream reader (tests/test_frame_stream.py,
  differential, any bytes cut anywhere).
- Nothing waits in here unbounded: past :data:`QUEUED_FRAMES` frames or
  :data:`QUEUED_BYTES` bytes not yet taken by aiormq's reader, the socket's reads pause,
  through the same transport methods the paced reads gate (:mod:`~.read_pause`).
- A body buffer is made at its content header, at most one per channel, and only for a
  body the broker announced; a larger one than :data:`LARGEST_BUFFERED` is received frame
  by frame, as before.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import Any

import numpy as np
import pamqp.frame
from aiormq.exceptions import InvalidFrameError, ProtocolSyntaxError
from pamqp import constants
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

from fedq.messages import unfilled

_HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
_HEAD_SIZE = constants.FRAME_HEADER_SIZE
_END = constants.FRAME_END
_BETWEEN = _HEAD_SIZE + 1  # a frame's end byte and the next frame's head

#: Bytes read ahead from the socket when no body is being received straight.
READ_AHEAD = 1 << 16
#: Frames parsed but not yet taken by aiormq, past which the socket's reads pause.
QUEUED_FRAMES = 64
#: Bytes of those frames past which the socket's reads pause (a whole body counts).
QUEUED_BYTES = 1 << 20
#: The largest body received into a buffer of its own: RabbitMQ's own limit on a message
#: (``max_message_size``) is 128 MiB by default and at most 512 MiB.
LARGEST_BUFFERED = 512 << 20

Received = tuple[int, int, Any]  # weight (bytes read), channel, frame


class _Body:
    """A body being received, and how much of it is filled: the bytes it will be handed
    over as (not zeroed), filled through ``data``. A body frame's payload is read with the
    end byte and the next frame's head that follow it, in one read, where the body has
    room for them: those bytes land where the next payload goes, and are copied out first."""

    __slots__ = ("body", "data", "filled", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.body: bytes | None = None
        if unfilled.FILLS_BYTES:
            self.body, self.data = unfilled.unfilled_bytes(size)
        else:
            self.data = np.empty(size, dtype=np.uint8)
        self.filled = 0

    @property
    def left(self) -> int:
        return self.size - self.filled

    def taken(self, size: int | None = None) -> bytes:
        """The body as bytes: all of it (no copy), or its first ``size`` bytes."""
        if size is None and self.body is not None:
            return self.body
        return self.data[: self.size if size is None else size].tobytes()


class _Failure:
    """An error to raise in its place among the frames."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class FrameStream(asyncio.streams.FlowControlMixin, asyncio.BufferedProtocol):
    """One AMQP connection's protocol: frames for aiormq's reader (:meth:`next_frame`),
    and the write flow control asyncio's ``StreamWriter`` expects of a protocol."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._event_loop = loop
        self.transport: asyncio.Transport | None = None
        self._stage = bytearray(READ_AHEAD)
        self._start = 0  # unparsed bytes are _stage[_start:_end]
        self._end = 0
        self._frames: deque[Received | _Failure] = deque()
        self._queued_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._failed = False
        self._started = False
        self._reads_paused = False
        self._bodies: dict[int, _Body] = {}
        #: A body frame whose payload the socket reads straight into its body: channel,
        #: body, frame size, payload bytes still to come.
        self._direct: tuple[int, _Body, int, int] | None = None
        #: A body frame read whole into its body, whose end byte comes next.
        self._ending: tuple[int, _Body, int] | None = None
        self._closed: asyncio.Future[None] = loop.create_future()

    # ------------------------------------------------------------ asyncio's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._direct is not None:  # the payload, its end byte and the next head
            _, body, _, left = self._direct
            view = memoryview(body.data)  # type: ignore[arg-type]
            return view[body.filled : min(body.filled + left + _BETWEEN, body.size)]
        # Right after a body frame read straight but for its end: the end byte and the
        # next frame's head alone, so that a next body frame's payload is read straight.
        want = _BETWEEN if self._ending is not None else READ_AHEAD
        old = self._stage
        if self._start == self._end:
            self._start = self._end = 0
        if len(old) - self._end < want:
            # The unparsed bytes to the front; for a frame larger than the stage, into a
            # new one twice as large (asyncio may still hold a view of the old).
            kept = self._end - self._start
            if len(old) < kept + want:
                self._stage = bytearray(max(kept + want, 2 * len(old)))
            self._stage[:kept] = old[self._start : self._end]
            self._start, self._end = 0, kept
        return memoryview(self._stage)[self._end : self._end + want]

    def buffer_updated(self, nbytes: int) -> None:
        direct = self._direct
        if direct is not None:
            channel, body, size, left = direct
            if nbytes < left:
                body.filled += nbytes
                self._direct = (channel, body, size, left - nbytes)
                return
            body.filled += left
            self._direct = None
            self._ending = (channel, body, size)
            # What came past the payload goes to the stage (empty while reading straight).
            nbytes -= left
            self._stage[:nbytes] = body.data[body.filled : body.filled + nbytes].tobytes()
            self._start = 0
            self._end = 0
        self._end += nbytes
        self._parse()

    def eof_received(self) -> bool:
        self._end_of_stream(None)
        return False  # the transport closes itself (and must, under TLS)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_of_stream(exc)
        if not self._closed.done():
            if exc is None:
                self._closed.set_result(None)
            else:
                self._closed.set_exception(exc)
        super().connection_lost(exc)
        self._wake()

    def _get_close_waiter(self, stream: object) -> asyncio.Future[None]:
        return self._closed

    def __del__(self) -> None:
        closed = getattr(self, "_closed", None)
        if closed is not None and closed.done() and not closed.cancelled():
            closed.exception()  # retrieved: no "exception never retrieved" report

    # ------------------------------------------------------------ aiormq's side
    def at_eof(self) -> bool:
        """The connection ended and every frame read was taken (an error in place of a
        frame cut short, or of the connection's loss, is one to take)."""
        return self._eof and not self._frames

    async def next_frame(self) -> Received:
        """The next frame (weight, channel, frame), or the error in its place: what
        ``FrameReceiver.get_frame`` returns and raises, but for the mapping of connection
        errors to aiormq's, which stays its caller's."""
        while not self._frames:
            if self._eof:
                raise asyncio.IncompleteReadError(b"", 1)  # as a stream reader at its end
            self._waiter = self._event_loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._frames.popleft()
        if isinstance(item, _Failure):
            raise item.error
        self._queued_bytes -= item[0]
        if self._reads_paused and not self._too_many(half=True):
            self._reads_paused = False
            self._reading(True)
        return item

    # ------------------------------------------------------------ parsing
    def _parse(self) -> None:
        stage, at, end = self._stage, self._start, self._end
        while not self._failed:
            if self._ending is not None:
                if at == end:
                    break
                channel, body, size = self._ending
                self._ending = None
                if stage[at] != _END:
                    body.filled -= size  # this frame is not one to hand over
                    payload = body.data[body.filled : body.filled + size].tobytes()
                    head = _HEAD.pack(constants.FRAME_BODY, channel, size)
                    self._unmarshal(head + payload + stage[at : at + 1])  # pamqp's error
                    break
                at += 1
                self._body_frame_read(channel, body)
                continue
            if end - at < _HEAD_SIZE:
                break
            if not self._started:
                self._started = True
                if stage[at : at + 4] == b"AMQP":
                    self._fail(ProtocolSyntaxError("Unexpected AMQP protocol header"))
                    break
            kind, channel, size = _HEAD.unpack_from(stage, at)
            receiving = self._bodies.get(channel)
            if receiving is not None:
                if kind == constants.FRAME_BODY and 0 < size <= receiving.left:
                    at = self._take_body_payload(channel, receiving, size, at + _HEAD_SIZE, end)
                    continue
                self._hand_over_partial(channel, receiving)
            whole = _HEAD_SIZE + size + 1
            if end - at < whole:
                break
            self._unmarshal(bytes(stage[at : at + whole]))
            at += whole
        self._start = at

    def _take_body_payload(self, channel: int, body: _Body, size: int, at: int, end: int) -> int:
        """Copy what the stage holds of a body frame's payload into its body; the rest
        the socket reads straight into it. Returns where the stage's unparsed bytes start."""
        held = min(size, end - at)
        body.data[body.filled : body.filled + held] = np.frombuffer(
            self._stage, dtype=np.uint8, count=held, offset=at
        )
        body.filled += held
        if held < size:
            self._direct = (channel, body, size, size - held)
        else:
            self._ending = (channel, body, size)
        return at + held

    def _body_frame_read(self, channel: int, body: _Body) -> None:
        if body.left == 0:
            del self._bodies[channel]
            self._queue((body.size, channel, ContentBody(body.taken())))

    def _hand_over_partial(self, channel: int, body: _Body) -> None:
        """A frame on ``channel`` that is not the next piece of its body (a broker that
        cut a body short, or sent more than announced): what was read of it goes to
        aiormq as one body frame first, and the channel's frames go on as they come."""
        del self._bodies[channel]
        if body.filled:
            self._queue((body.filled, channel, ContentBody(body.taken(body.filled))))

    def _unmarshal(self, data: bytes) -> None:
        try:
            weight, channel, frame = pamqp.frame.unmarshal(data)
        except PAMQPException as e:
            self._fail(InvalidFrameError(str(e)))
            return
        if isinstance(frame, ContentHeader) and READ_AHEAD < frame.body_size <= LARGEST_BUFFERED:
            self._bodies[channel] = _Body(frame.body_size)
        self._queue((weight, channel, frame))

    def _queue(self, item: Received) -> None:
        self._frames.append(item)
        self._queued_bytes += item[0]
        self._wake()
        if not self._reads_paused and self._too_many():
            self._reads_paused = True
            self._reading(False)

    def _reading(self, on: bool) -> None:
        """Resume (``on``) or pause the socket's reads, unless it is gone or closing."""
        if self.transport is not None and not self.transport.is_closing():
            if on:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def _too_many(self, half: bool = False) -> bool:
        scale = 2 if half else 1
        return (
            len(self._frames) * scale > QUEUED_FRAMES or self._queued_bytes * scale > QUEUED_BYTES
        )

    def _fail(self, error: BaseException) -> None:
        """An error in place of the next frame, after what was read of bodies before it;
        nothing after it is read."""
        self._failed = True
        for channel, body in list(self._bodies.items()):
            self._hand_over_partial(channel, body)
        self._frames.append(_Failure(error))
        self._wake()
        self._reading(False)

    def _end_of_stream(self, lost: BaseException | None) -> None:
        """The connection ended (``lost``: with that error): the frames read whole go to
        aiormq, a body's among them as far as it came, then the error a stream reader
        would raise in place of a frame cut short, or ``lost``."""
        if self._eof:
            return
        self._eof = True
        if not self._failed:
            cut = self._cut_short()
            for channel, body in list(self._bodies.items()):
                self._hand_over_partial(channel, body)
            if lost is not None:
                self._frames.append(_Failure(lost))
            elif cut is not None:
                self._frames.append(_Failure(cut))
        self._wake()

    def _cut_short(self) -> asyncio.IncompleteReadError | None:
        """What the stream reader's reads of a frame (1 byte, 6, then the payload and the
        end byte) would raise at this EOF, if one was cut short; a body frame's bytes read
        so far are taken out of its body."""
        if self._direct is not None:
            _, body, size, left = self._direct
            body.filled -= size - left
            return asyncio.IncompleteReadError(bytes(size - left), size + 1)
        if self._ending is not None:
            _, body, size = self._ending
            body.filled -= size
            return asyncio.IncompleteReadError(bytes(size), size + 1)
        held = bytes(self._stage[self._start : self._end])
        if not held:
            return None
        if len(held) < _HEAD_SIZE:
            return asyncio.IncompleteReadError(held[1:], _HEAD_SIZE - 1)
        _, _, size = _HEAD.unpack_from(held)
        return asyncio.IncompleteReadError(held[_HEAD_SIZE:], size + 1)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def open_frame_stream(
    host: str | None, port: int | None, **kwargs: Any
) -> tuple[FrameStream, asyncio.StreamWriter]:
    """A connection whose protocol is a :class:`FrameStream`, and its writer."""
    loop = asyncio.get_running_loop()
    stream = FrameStream(loop)
    # None for either is what aiormq's own factories pass on too (asyncio's default).
    transport, _ = await loop.create_connection(lambda: stream, host, port, **kwargs)  # type: ignore[arg-type]
    return stream, asyncio.StreamWriter(transport, stream, None, loop)
