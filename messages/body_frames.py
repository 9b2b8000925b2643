"""A message body read from the socket with two copies, not five and a growing buffer;
and written to it with one, not four and another growing buffer.

aiormq 7 reads every frame into a ``BytesIO`` (header, then payload), has pamqp slice the
payload out of that (a copy), and assembles a delivery's body in another ``BytesIO``,
frame after frame. That last buffer grows by reallocation: with fedq's malloc thresholds
(:mod:`fedq.runtime.allocator`) a 4 MiB chunk body lives on the heap, where a realloc that
cannot grow in place copies everything written so far. A CPU profile of the coordinator
(yappi, CPU clock, ``bench/round_overhead.py --processes --params 10000000``) put that
assembly's ``BytesIO.write`` first of all its functions, ahead of the folds: 57 us for
each 128 KiB frame, six times a memcpy of it (bench/README.md, "Where a round's time
goes").

Publishing had the same shape: aiormq copies a body into frames of ``frame_max`` (read
from a ``BytesIO``), pamqp copies each into its marshalled frame, and aiormq writes those
into one more ``BytesIO`` that grows by reallocation, frame after frame.

:func:`install` replaces four methods of aiormq:

- ``FrameReceiver.get_frame``: a body frame's payload is read straight into its own bytes
  (one copy out of the stream's buffer) and becomes the ``ContentBody``; every other frame
  goes through ``pamqp.frame.unmarshal`` as before (looked up on each call, so
  :mod:`fedq.messages.frames` still wraps it).
- ``Channel._read_content``: a body's frames are kept in a list and joined once, at its
  size (a body of one frame is that frame's bytes, no copy).
- ``Channel._split_body``: a body's frames are views of it, not copies.
- ``ChannelFrame.marshall``: the frames of a publish are joined once into what is written;
  a body frame's header, payload (the view) and end byte go in as they are, every other
  frame as pamqp marshals it.

What must stay true: the same bytes written as aiormq's own, for every list of frames; the
same frames, weights (bytes consumed) and errors read as aiormq's own, for every input: a
body frame whose end byte is wrong, or of size 0, goes through pamqp, which refuses it as
before; a read cut short raises aiormq's ``AMQPConnectionError``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import aiormq.channel
import aiormq.connection
import pamqp.frame
from aiormq.abc import ChannelFrame, DeliveredMessage
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp import commands as spec
from pamqp import constants
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

from fedq.messages.frame_stream import FrameStream

_HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
_END = bytes([constants.FRAME_END])


_REPLACED = (
    (aiormq.connection.FrameReceiver, "get_frame"),
    (aiormq.channel.Channel, "_read_content"),
    (aiormq.channel.Channel, "_split_body"),
    (ChannelFrame, "marshall"),
)
_AIORMQS_OWN = [owner.__dict__[name] for owner, name in _REPLACED]


def install() -> None:
    """Make every aiormq connection of this process read and write bodies this way.
    Idempotent."""
    for (owner, name), ours in zip(_REPLACED, _OURS, strict=True):
        setattr(owner, name, ours)


def uninstall() -> None:
    """aiormq's own methods again: for the benchmarks' raw floor, which measures aio-pika
    as it ships, in processes that import fedq."""
    for (owner, name), own in zip(_REPLACED, _AIORMQS_OWN, strict=True):
        setattr(owner, name, own)


async def _get_frame(self: aiormq.connection.FrameReceiver) -> aiormq.connection.ReceivedFrame:
    """aiormq's ``FrameReceiver.get_frame``, reading a body frame's payload as it is; or
    the next frame of a :class:`~.frame_stream.FrameStream`, which read it already."""
    if self.reader.at_eof():
        del self.reader
        raise StopAsyncIteration
    async with self.lock:
        with _as_aiormqs_errors():
            if isinstance(self.reader, FrameStream):
                return await self.reader.next_frame()
            head = await _head(self.reader)
            if not self.started and head.startswith(b"AMQP"):
                raise ProtocolSyntaxError("Unexpected AMQP protocol header")
            self.started = True
            kind, channel, size = _HEAD.unpack(head)
            if kind == constants.FRAME_BODY and size:
                payload, end = await _payload_and_end(self.reader, size)
                if end == _END:
                    return constants.FRAME_HEADER_SIZE + size + 1, channel, ContentBody(payload)
                data = b"".join((head, payload, end))  # pamqp says what is wrong with it
            else:
                data = head + await self.reader.readexactly(size + 1)
    try:
        return pamqp.frame.unmarshal(data)
    except PAMQPException as e:
        raise InvalidFrameError(str(e)) from e


@contextmanager
def _as_aiormqs_errors() -> Iterator[None]:
    """A read cut short or a connection error, raised as aiormq's reader raises it."""
    try:
        yield
    except asyncio.IncompleteReadError as e:
        raise AMQPConnectionError(
            "Server connection unexpectedly closed. "
            f"Read {len(e.partial)} bytes but {e.expected} bytes expected",
        ) from e
    except ConnectionRefusedError as e:
        raise AMQPConnectionError(f"Server connection refused: {e!r}") from e
    except ConnectionResetError as e:
        raise AMQPConnectionError(f"Server connection reset: {e!r}") from e
    except ConnectionError as e:
        raise AMQPConnectionError(f"Server connection error: {e!r}") from e
    except OSError as e:
        raise AMQPConnectionError(f"Server communication error: {e!r}") from e


async def _head(reader: asyncio.StreamReader) -> bytes:
    """A frame's 7 bytes of type, channel and size; cut short, the error aiormq's reads of
    1 byte and then 6 would raise."""
    try:
        return await reader.readexactly(constants.FRAME_HEADER_SIZE)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise asyncio.IncompleteReadError(b"", 1) from None
        raise asyncio.IncompleteReadError(e.partial[1:], 6) from None


async def _payload_and_end(reader: asyncio.StreamReader, size: int) -> tuple[bytes, bytes]:
    """A body frame's payload and end byte, read apart so that the payload needs no slice;
    cut short, the error aiormq's single read of both would raise."""
    try:
        payload = await reader.readexactly(size)
    except asyncio.IncompleteReadError as e:
        raise asyncio.IncompleteReadError(e.partial, size + 1) from None
    try:
        return payload, await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        raise asyncio.IncompleteReadError(payload, size + 1) from None


async def _read_content(
    self: aiormq.channel.Channel, frame: object, header: ContentHeader
) -> DeliveredMessage:
    """aiormq's ``Channel._read_content``, joining the body's frames once at the end."""
    parts: list[bytes] = []
    size = 0
    while size < header.body_size:
        content = await self._Channel__get_content_frame()  # type: ignore[attr-defined]
        if not content.value:  # as aiormq: an empty frame ends the body
            break
        parts.append(content.value)
        size += len(content.value)
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    return DeliveredMessage(delivery=frame, header=header, body=body, channel=self)  # type: ignore[arg-type]


def _split_body(self: aiormq.channel.Channel, body: bytes) -> list[ContentBody]:
    """aiormq's ``Channel._split_body``: frames of at most ``max_content_size`` bytes, as
    views of ``body``."""
    view = memoryview(body)
    step = self.max_content_size
    return [ContentBody(view[i : i + step]) for i in range(0, len(view), step)]  # type: ignore[arg-type]


def _marshall(
    cls: type[ChannelFrame],
    channel_number: int,
    frames: Iterable[Any],
    drain_future: asyncio.Future[Any] | None = None,
) -> ChannelFrame:
    """aiormq's ``ChannelFrame.marshall``, joining every frame's bytes once."""
    parts: list[bytes | memoryview] = []
    should_close = False
    for frame in frames:
        if should_close:
            logging.getLogger("aiormq.connection").getChild("marshall").warning(
                "It looks like you are going to send a frame %r after the connection is "
                "closed, it's pointless, the frame is dropped.",
                frame,
            )
            continue
        if isinstance(frame, spec.Connection.CloseOk):
            should_close = True
        if isinstance(frame, ContentBody):
            value = frame.value
            parts += (_HEAD.pack(constants.FRAME_BODY, channel_number, len(value)), value, _END)
        else:
            parts.append(pamqp.frame.marshal(frame, channel_number))
    return cls(payload=b"".join(parts), drain_future=drain_future, should_close=should_close)


_OURS = [_get_frame, _read_content, _split_body, classmethod(_marshall)]
