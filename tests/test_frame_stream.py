"""A connection's frame stream (fedq.messages.frame_stream) reads what aiormq's reader
reads over asyncio's stream reader (fedq.messages.body_frames): for any bytes the broker,
or anything posing as it, can send, cut into socket reads anywhere, the same frames on
each channel (a body's frames come as one) and the same error at the end. Its socket's
reads pause while aiormq leaves too much of it unread."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import aiormq.connection
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from fedq.messages import body_frames, frame_stream, unfilled
from fedq.messages.frame_stream import FrameStream
from tests.test_body_frames import FRAME_END, body_frame

#: The read-ahead in these tests: bodies larger go straight into a buffer of their own.
READ_AHEAD = 64


@pytest.fixture(autouse=True, params=[True, False], ids=["into bytes", "copied out"])
def small_read_ahead(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test with a small read-ahead, once with bodies received into the bytes handed
    over and once on the fallback for interpreters where that cannot be done."""
    monkeypatch.setattr(frame_stream, "READ_AHEAD", READ_AHEAD)
    monkeypatch.setattr(unfilled, "FILLS_BYTES", request.param)


class Transport:
    """What a frame stream asks of its transport: pauses and resumes, counted."""

    def __init__(self) -> None:
        self.reading = True
        self.pauses = 0

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False


def a_message(channel: int, body: bytes, frame_size: int, announced: int | None = None) -> bytes:
    """A delivery on ``channel``: its method, its header (announcing ``announced`` bytes,
    the body's own size unless told), its body in frames of ``frame_size``."""
    size = len(body) if announced is None else announced
    parts = [
        pamqp_frame.marshal(spec.Basic.Deliver("tag", 1, False, "x", "k"), channel),
        pamqp_frame.marshal(ContentHeader(body_size=size), channel),
    ]
    cuts = range(0, len(body), frame_size)
    parts += [body_frame(body[i : i + frame_size], channel) for i in cuts]
    return b"".join(parts)


def feed(stream: FrameStream, data: bytes, cuts: list[int]) -> None:
    """``data`` as the socket's reads would give it: each read as much as the stream asks
    for, at most the next of ``cuts`` bytes (then the rest), then the end of the stream."""
    at, sizes = 0, iter(cuts)
    while at < len(data):
        buffer = stream.get_buffer(-1)
        n = min(len(buffer), next(sizes, len(data)), len(data) - at)
        buffer[:n] = data[at : at + n]
        at += n
        stream.buffer_updated(n)
    stream.eof_received()


async def read_all(reader: Any) -> list[Any]:
    """Every frame aiormq's reader gets from ``reader`` (frame stream or stream reader),
    then what it raised (its type and text)."""
    receiver = aiormq.connection.FrameReceiver(reader)
    out: list[Any] = []
    while True:
        try:
            _, channel, frame = await body_frames._get_frame(receiver)
        except StopAsyncIteration:
            return out
        except Exception as exc:
            return [*out, (type(exc).__name__, str(exc))]
        value = frame.value if isinstance(frame, ContentBody) else pamqp_frame.marshal(frame, 0)
        out.append((channel, type(frame).__name__, bytes(value)))


def by_channel(read: list[Any]) -> tuple[dict[int, list[Any]], Any]:
    """Each channel's frames in order, a body's frames joined; and the error at the end."""
    error = read[-1] if read and len(read[-1]) == 2 else None
    channels: dict[int, list[Any]] = {}
    for channel, kind, value in read[: len(read) - (error is not None)]:
        frames = channels.setdefault(channel, [])
        if kind == "ContentBody" and frames and frames[-1][0] == "ContentBody":
            frames[-1] = (kind, frames[-1][1] + value)
        else:
            frames.append((kind, value))
    return channels, error


def both_read(data: bytes, cuts: list[int]) -> tuple[Any, Any]:
    async def over_a_stream_reader() -> list[Any]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_all(reader)

    async def over_a_frame_stream() -> list[Any]:
        stream = FrameStream(asyncio.get_running_loop())
        stream.connection_made(Transport())  # type: ignore[arg-type]
        feed(stream, data, cuts)
        return await read_all(stream)

    return by_channel(asyncio.run(over_a_stream_reader())), by_channel(
        asyncio.run(over_a_frame_stream())
    )


messages = st.builds(
    a_message,
    st.integers(1, 3),
    st.binary(max_size=700),
    st.integers(1, 300),
    st.one_of(st.none(), st.integers(0, 800)),  # a header that lies, at times
)
others = st.sampled_from(
    [
        pamqp_frame.marshal(Heartbeat(), 0),
        pamqp_frame.marshal(spec.Basic.Ack(delivery_tag=7), 2),
        body_frame(b"stray", channel=3),
        body_frame(b"", channel=1),  # empty: pamqp refuses it
    ]
)
tails = st.one_of(
    st.binary(max_size=12),  # garbage, a stray byte
    st.just(b"AMQP\x00\x00\x09\x01"),  # the broker's protocol header: another version
    st.just(struct.pack(">BHI", 9, 1, 2) + b"ab" + FRAME_END),  # an unknown frame type
)


@given(
    st.lists(st.one_of(messages, others), max_size=6),
    tails,
    st.integers(0, 4000),
    st.lists(st.integers(1, 200), max_size=40),
)
def test_any_bytes_cut_into_any_reads_give_aiormq_the_same_frames_and_error(
    sequence, tail, cut_at, reads
):
    """Deliveries on several channels, their bodies in frames of any size (larger than
    the read-ahead or not, the header's size right or wrong), other frames between them,
    then anything; the whole cut short anywhere, and read in pieces of any size."""
    data = (b"".join(sequence) + tail)[:cut_at]
    expected, got = both_read(data, reads)
    assert got == expected


@pytest.mark.parametrize("reads", [[], [1] * 400, [7, 1, 300, 9]], ids=["whole", "bytes", "mixed"])
def test_a_body_larger_than_the_read_ahead_comes_whole_as_one_frame(reads):
    body = bytes(range(256)) * 5
    data = a_message(1, body, 100) + pamqp_frame.marshal(Heartbeat(), 0)

    async def read() -> list[Any]:
        stream = FrameStream(asyncio.get_running_loop())
        stream.connection_made(Transport())  # type: ignore[arg-type]
        feed(stream, data, reads)
        return await read_all(stream)

    read_frames = asyncio.run(read())
    kinds = [kind for _, kind, _ in read_frames]
    assert kinds == ["Deliver", "ContentHeader", "ContentBody", "Heartbeat"]
    assert read_frames[2][2] == body


def test_a_body_is_handed_over_as_the_bytes_it_was_received_into(monkeypatch):
    """No copy to hand a body over: aiormq gets the very object the socket filled."""
    assert unfilled._fills_bytes()  # so on this interpreter
    monkeypatch.setattr(unfilled, "FILLS_BYTES", True)  # whatever the fixture chose
    made: list[bytes] = []

    def made_here(size: int) -> tuple[bytes, Any]:
        body, view = real(size)
        made.append(body)
        return body, view

    real = unfilled.unfilled_bytes
    monkeypatch.setattr(unfilled, "unfilled_bytes", made_here)
    body = bytes(range(256)) * 5
    data = a_message(1, body, 100) + pamqp_frame.marshal(Heartbeat(), 0)

    async def read() -> list[Any]:
        stream = FrameStream(asyncio.get_running_loop())
        stream.connection_made(Transport())  # type: ignore[arg-type]
        feed(stream, data, [7, 1, 300, 9])
        return await read_all(stream)

    handed = asyncio.run(read())[2][2]
    assert handed == body
    assert len(made) == 1 and handed is made[0]


def test_reads_pause_while_aiormq_leaves_too_much_unread_and_resume_as_it_reads():
    async def run() -> None:
        stream = FrameStream(asyncio.get_running_loop())
        transport = Transport()
        stream.connection_made(transport)  # type: ignore[arg-type]
        heartbeat = pamqp_frame.marshal(Heartbeat(), 0)
        for _ in range(frame_stream.QUEUED_FRAMES):
            buffer = stream.get_buffer(-1)
            buffer[: len(heartbeat)] = heartbeat
            stream.buffer_updated(len(heartbeat))
        assert transport.reading  # as many frames as it may hold
        buffer = stream.get_buffer(-1)
        buffer[: len(heartbeat)] = heartbeat
        stream.buffer_updated(len(heartbeat))
        assert not transport.reading  # one more: paused
        while not transport.reading:
            await stream.next_frame()
        assert transport.pauses == 1
        # Resumed at half the bound, not at the first frame taken (no pause per frame).
        assert len(stream._frames) == frame_stream.QUEUED_FRAMES // 2

    asyncio.run(run())


def test_a_body_of_more_bytes_than_the_bound_pauses_reads_until_taken():
    async def run() -> None:
        stream = FrameStream(asyncio.get_running_loop())
        transport = Transport()
        stream.connection_made(transport)  # type: ignore[arg-type]
        body = bytes(frame_stream.QUEUED_BYTES + 1)
        data = a_message(1, body, 1 << 17)
        at = 0
        while transport.reading and at < len(data):
            buffer = stream.get_buffer(-1)
            n = min(len(buffer), len(data) - at)
            buffer[:n] = data[at : at + n]
            at += n
            stream.buffer_updated(n)
        assert at == len(data) and not transport.reading
        assert [type(f).__name__ for _, _, f in [await stream.next_frame() for _ in range(3)]] == [
            "Deliver",
            "ContentHeader",
            "ContentBody",
        ]
        assert transport.reading

    asyncio.run(run())
