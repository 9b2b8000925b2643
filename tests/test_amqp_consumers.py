"""On RabbitMQ, a consumer that closes leaves its channel to the next one on the same
connection: a participant stops consuming every time it trains, and a channel opened and
closed each time cost it and the broker more than the consumer itself. What closing did
must still hold: every delivery not settled goes back to the queue, and settling one of
them afterwards fails clearly without harming the channel the next consumer uses."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from fedq.messages.amqp import AmqpTransport
from fedq.messages.transport import Delivery, TransportError
from tests.conftest import BROKER_URL

pytestmark = pytest.mark.broker


def channel_of(delivery: Delivery) -> object:
    """The client's AMQP channel ``delivery`` came on (a new channel is a new object, even
    where it takes the number of one closed before)."""
    return delivery._msg.channel  # type: ignore[attr-defined]


async def test_consumers_one_after_another_share_a_channel_and_lose_nothing() -> None:
    queue = f"fedq.test-{uuid.uuid4().hex[:10]}.q"
    async with AmqpTransport(BROKER_URL) as pub, AmqpTransport(BROKER_URL) as sub:
        await pub.declare_queue(queue)
        try:
            for i in range(3):
                await pub.publish("", queue, b"%d" % i, message_id=str(i))
            channels = []
            held: list[Delivery] = []
            for _ in range(3):
                async with sub.consume(queue, prefetch=1) as deliveries:
                    delivery = await asyncio.wait_for(anext(deliveries), 10)
                    channels.append(channel_of(delivery))
                    held.append(delivery)  # never settled while its consumer was open
            assert all(channel is channels[0] for channel in channels), channels
            assert [d.message_id for d in held] == ["0", "0", "0"]
            assert [d.redelivered for d in held] == [False, True, True]
            with pytest.raises(TransportError, match="consumer closed"):
                await held[0].ack()  # given back already: the channel must not see its tag
            async with sub.consume(queue, prefetch=4) as deliveries:  # a new window
                again = [await asyncio.wait_for(anext(deliveries), 10) for _ in range(3)]
                assert [d.message_id for d in again] == ["0", "1", "2"]
                assert all(channel_of(d) is channels[0] for d in again)
                for delivery in again:
                    await delivery.ack()
            assert await pub.queue_depth(queue) == 0
        finally:
            await pub.delete_queue(queue)


async def test_a_kept_channel_consuming_a_deleted_queue_says_so() -> None:
    queue = f"fedq.test-{uuid.uuid4().hex[:10]}.q"
    async with AmqpTransport(BROKER_URL) as pub, AmqpTransport(BROKER_URL) as sub:
        await pub.declare_queue(queue)
        async with sub.consume(queue, prefetch=1):
            pass
        await pub.delete_queue(queue)
        with pytest.raises(TransportError, match="no queue"):
            async with sub.consume(queue, prefetch=1):
                pass
        await pub.declare_queue(queue)
        try:
            await pub.publish("", queue, b"x")
            async with sub.consume(queue, prefetch=1) as deliveries:
                delivery = await asyncio.wait_for(anext(deliveries), 10)
                assert delivery.body == b"x"
                await delivery.ack()
        finally:
            await pub.delete_queue(queue)
