"""fedq's reading and writing of AMQP frames and bodies (fedq.messages.body_frames) does what
aiormq's own does: for any bytes the broker, or anything posing as it, can send, the same
frames, weights and errors read; for any frames published, the same bytes written. And
bodies of every size around a frame's come through RabbitMQ whole."""

from __future__ import annotations

import asyncio
import os
import struct
import uuid
from functools import partial
from typing import Any

import aiormq.abc
import aiormq.connection
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from fedq.messages import body_frames
from fedq.messages.amqp import AmqpTransport
from tests.conftest import BROKER_URL

FRAME_END = b"\xce"


def body_frame(payload: bytes, channel: int = 1, end: bytes = FRAME_END) -> bytes:
    return struct.pack(">BHI", 3, channel, len(payload)) + payload + end


def marshalled(frame: Any, channel: int = 1) -> bytes:
    return pamqp_frame.marshal(frame, channel)


async def read_all(get_frame: Any, data: bytes) -> list[Any]:
    """Every frame ``get_frame`` reads from ``data`` (a body's payload, any other frame as
    marshalled again), then what it raised (its type and text)."""
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    receiver = aiormq.connection.FrameReceiver(reader)
    out: list[Any] = []
    while True:
        try:
            weight, channel, frame = await get_frame(receiver)
        except StopAsyncIteration:
            return out
        except Exception as exc:
            return [*out, (type(exc).__name__, str(exc))]
        value = frame.value if isinstance(frame, ContentBody) else marshalled(frame, channel)
        out.append((weight, channel, type(frame).__name__, value))


def both_read(data: bytes) -> tuple[list[Any], list[Any]]:
    own = body_frames._AIORMQS_OWN[0]
    return (
        asyncio.run(read_all(own, data)),
        asyncio.run(read_all(body_frames._get_frame, data)),
    )


frames = st.one_of(
    st.binary(min_size=1, max_size=3000).map(body_frame),
    st.just(marshalled(Heartbeat(), 0)),
    st.just(marshalled(spec.Basic.Ack(delivery_tag=7))),
    st.integers(0, 10**6).map(lambda n: marshalled(ContentHeader(body_size=n))),
)


@given(st.lists(frames, max_size=8), st.binary(max_size=12))
def test_frames_and_what_follows_them_read_as_aiormq_reads_them(sequence, tail):
    """Valid frames, then anything: a cut frame, a stray byte, garbage."""
    expected, got = both_read(b"".join(sequence) + tail)
    assert got == expected


@pytest.mark.parametrize(
    "data",
    [
        body_frame(b"abc", end=b"\x00"),  # the end byte wrong
        body_frame(b""),  # a body frame of size 0
        body_frame(b"x" * 100)[:50],  # cut short
        b"AMQP\x00\x00\x09\x01",  # the broker's protocol header: another version
        struct.pack(">BHI", 9, 1, 2) + b"ab" + FRAME_END,  # an unknown frame type
    ],
    ids=["bad-end", "empty-body", "cut", "protocol-header", "unknown-type"],
)
def test_a_bad_frame_fails_as_it_does_in_aiormq(data):
    expected, got = both_read(data)
    assert got == expected
    assert got[-1][0] in {"InvalidFrameError", "AMQPConnectionError", "ProtocolSyntaxError"}


def test_a_body_frame_is_its_payload_as_read():
    payload = os.urandom(1000)
    (weight, channel, kind, value), *_ = both_read(body_frame(payload, channel=5))[1]
    assert (weight, channel, kind, value) == (7 + 1000 + 1, 5, "ContentBody", payload)


class SplittingChannel:
    """What ``Channel._split_body`` reads of its channel."""

    def __init__(self, max_content_size: int) -> None:
        self.max_content_size = max_content_size


def written(split: Any, marshall: Any, frames: list[Any], body: bytes, size: int) -> Any:
    """The payload and close flag of a publish: ``frames`` then ``body`` split at ``size``."""
    marshalled_frame = marshall(3, [*frames, *split(SplittingChannel(size), body)])
    return marshalled_frame.payload, marshalled_frame.should_close


@given(
    st.binary(max_size=5000),
    st.integers(1, 2000),
    st.lists(
        st.sampled_from(
            [spec.Basic.Publish(exchange="x", routing_key="k"), Heartbeat(), spec.Basic.Ack(1)]
        ),
        max_size=3,
    ),
    st.booleans(),
)
def test_a_publish_writes_the_bytes_aiormq_writes(body, size, before, closing):
    """A body of any size, split at any frame size, after any frames; and after a
    Connection.CloseOk, which ends what is written."""
    frames = [*before, ContentHeader(body_size=len(body))]
    if closing:
        frames.insert(len(before) // 2, spec.Connection.CloseOk())
    _, _, own_split, own_marshall = body_frames._AIORMQS_OWN
    frame_class = aiormq.abc.ChannelFrame
    ours = written(
        body_frames._split_body, partial(body_frames._marshall, frame_class), frames, body, size
    )
    theirs = written(own_split, partial(own_marshall.__func__, frame_class), frames, body, size)
    assert ours == theirs


@pytest.mark.broker
async def test_bodies_of_every_size_around_a_frame_come_through_whole(queue_name):
    """RabbitMQ's frame_max is 131,072 bytes: a frame's payload is 8 bytes less. Sizes on
    both sides of one and two frames' payloads, none, and several megabytes."""
    payload = 131_072 - 8
    sizes = [0, 1, payload - 1, payload, payload + 1, 2 * payload, 2 * payload + 1, 5_000_000]
    bodies = [os.urandom(n) for n in sizes]
    async with AmqpTransport(BROKER_URL) as transport:
        await transport.declare_queue(queue_name)
        for i, body in enumerate(bodies):
            await transport.publish("", queue_name, body, message_id=str(i))
        async with transport.consume(queue_name, prefetch=2) as inbox:
            for body in bodies:
                delivery = await anext(inbox)
                assert delivery.body == body
                await delivery.ack()


@pytest.fixture
async def queue_name():
    name = f"fedq-test-bodies-{uuid.uuid4().hex[:8]}"
    yield name
    async with AmqpTransport(BROKER_URL) as transport:
        await transport.delete_queue(name)
