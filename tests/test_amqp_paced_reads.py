"""On RabbitMQ, a consumer on a connection of its own (``consumers_apart``, the
coordinator's) that holds its deliveries unacked: the broker may send far past the
prefetch, with one consumer throughout, while the bodies read from the socket and not
released stay at the prefetch, because the socket's reads pause
(:mod:`fedq.messages.read_pause`)."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import pytest
from pamqp.body import ContentBody

from fedq.messages.amqp import AmqpTransport
from fedq.messages.read_pause import DeliverFrames
from fedq.messages.transport import Delivery
from tests.conftest import BROKER_URL
from tests.helpers import until_async

pytestmark = pytest.mark.broker

#: Larger than what the client reads ahead of a pause (asyncio's read size and the stream
#: reader's buffer, a few hundred KiB), so a body read after the pause would be a whole one.
BODY = 1_200_000
PREFETCH = 4
SENT = 30


def body_bytes_read(frames: asyncio.Queue[Any], inbox: Any) -> int:
    """Bytes of bodies read from the socket and held by the client beyond what the test
    took: body frames waiting for aiormq's channel, and messages handed to the inbox."""
    queued: list[tuple[int, object]] = list(frames._queue)  # type: ignore[attr-defined]
    waiting = sum(len(frame.value) for _, frame in queued if isinstance(frame, ContentBody))
    handed = sum(len(m.body) for m in list(inbox.queue._queue))
    return waiting + handed


async def test_a_consumer_apart_holding_its_deliveries_pauses_reads_not_the_broker() -> None:
    queue = f"fedq.test-{uuid.uuid4().hex[:10]}.q"
    bodies = [os.urandom(BODY) for _ in range(SENT)]
    async with (
        AmqpTransport(BROKER_URL) as pub,
        AmqpTransport(BROKER_URL, consumers_apart=True) as sub,
    ):
        await pub.declare_queue(queue)
        try:
            for i, body in enumerate(bodies):
                await pub.publish("", queue, body, message_id=str(i))
            async with sub.consume(queue, prefetch=PREFETCH) as deliveries:
                inbox: Any = deliveries
                tags = list(inbox.tags)
                held: list[Delivery] = [
                    await asyncio.wait_for(anext(deliveries), 10) for _ in range(PREFETCH)
                ]  # bodies in hand: none released
                # The broker's window is not the prefetch: it hands over every message.
                await until_async(
                    lambda: pub.queue_depth(queue), lambda n: n == 0, what="nothing ready"
                )
                reads = inbox._reads
                assert reads.paused, "the socket is read with the prefetch's bodies in hand"
                transport = reads._gate.transport
                assert not transport.is_reading(), "the transport reads, paused or not"
                channel = await inbox._source.channel.get_underlay_channel()

                assert isinstance(channel.frames, DeliverFrames), "bodies not counted as read"

                async def idle() -> bool:  # what was read before the pause reached the inbox
                    return (
                        channel.frames.empty()
                        and inbox._read_ahead <= 1
                        and not transport.is_reading()
                    )

                await until_async(idle, what="the reads paused and processed")
                # Past the prefetch, at most the first frames of the body whose
                # basic.deliver paused the reads: never a whole body more.
                extra = body_bytes_read(channel.frames, inbox)
                assert extra < BODY, f"{extra} bytes of bodies read past the prefetch"
                held[0].release_body()  # as the coordinator does once it is spooled
                assert not reads.paused, "a body released, and still no reads"
                for delivery in held[1:]:
                    delivery.release_body()
                while len(held) < SENT:
                    delivery = await asyncio.wait_for(anext(deliveries), 10)
                    delivery.release_body()
                    held.append(delivery)
                assert inbox.tags == tags, "a consumer was replaced"
                for delivery in held:
                    await delivery.ack()
            assert [d.message_id for d in held] == [str(i) for i in range(SENT)]
            assert await pub.queue_depth(queue) == 0

            # A consumer that stops with its prefetch's bodies in hand leaves the socket
            # read: the connection's other consumers (a restarted one) must not wait.
            for i in range(PREFETCH + 2):
                await pub.publish("", queue, bodies[i], message_id=f"again-{i}")
            async with sub.consume(queue, prefetch=PREFETCH) as deliveries:
                again: Any = deliveries
                for _ in range(PREFETCH):
                    await asyncio.wait_for(anext(deliveries), 10)

                async def paused() -> bool:
                    return bool(again._reads.paused)

                await until_async(paused, what="the reads paused again")
                reads = again._reads
            assert reads.ran_out == 0, "the reads stayed paused after the consumer stopped"
            await until_async(
                lambda: pub.queue_depth(queue), lambda n: n == PREFETCH + 2, what="requeued"
            )
        finally:
            await pub.delete_queue(queue)


async def test_a_consumer_waiting_for_a_delivery_is_not_held_for_a_long_pause() -> None:
    """Bodies counted in hand that never let go (a consumer that keeps the prefetch's bodies
    unreleased and asks for more, or a count gone wrong) would hold the reads paused for
    the longest pause, 20 s, per body. Once the consumer waits for a delivery with none
    queued, the pause ends within WAITING_PAUSE (1 s), and says what held it."""
    queue = f"fedq.test-{uuid.uuid4().hex[:10]}.q"
    async with (
        AmqpTransport(BROKER_URL) as pub,
        AmqpTransport(BROKER_URL, consumers_apart=True) as sub,
    ):
        await pub.declare_queue(queue)
        try:
            for i in range(PREFETCH + 2):
                await pub.publish("", queue, os.urandom(BODY), message_id=str(i))
            async with sub.consume(queue, prefetch=PREFETCH) as deliveries:
                inbox: Any = deliveries
                held = [await asyncio.wait_for(anext(deliveries), 10) for _ in range(PREFETCH)]
                reads = inbox._reads

                async def paused() -> bool:
                    return bool(reads.paused)

                await until_async(paused, what="the reads paused")
                # None released: only the end of the pause lets the next ones in. 10 s is
                # half the longest pause and ten times the waiting one.
                for _ in range(2):
                    held.append(await asyncio.wait_for(anext(deliveries), 10))
                assert reads.ran_out >= 1, "a delivery came with the reads paused"
                for delivery in held:
                    await delivery.ack()
            assert [d.message_id for d in held] == [str(i) for i in range(PREFETCH + 2)]
        finally:
            await pub.delete_queue(queue)
