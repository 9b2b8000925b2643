"""On RabbitMQ, every channel the broker closes is answered (Channel.CloseOk) before its
number is used again: a Channel.Open of a number RabbitMQ still holds makes it close the
whole connection (CHANNEL_ERROR - second 'channel.open' seen), every consumer and unacked
delivery on it with it (fedq.messages.channel_closing). Each test opens on purpose a window
that the contract test cancelling lookups at every moment hit about once in 15 runs: a
channel opened before the answer is queued, and a full write queue when the answer is due.
Each fails on aiormq 7.2.4 alone, with that error."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiormq
import aiormq.abc
import pytest
from pamqp.commands import Channel
from pamqp.heartbeat import Heartbeat

from fedq.messages.amqp import AmqpTransport
from fedq.messages.transport import Delivery
from tests.conftest import BROKER_URL

pytestmark = pytest.mark.broker

FrameItem = tuple[Any, Any]
Put = Callable[[FrameItem], Awaitable[None]]
Hook = Callable[[FrameItem, Put], Awaitable[None]]


@dataclass
class Closing:
    """A connection holding a delivery unacked, and a channel on it about to ask for a
    queue that is gone (RabbitMQ answers by closing it)."""

    connection: aiormq.abc.AbstractConnection
    channel: aiormq.abc.AbstractChannel
    held: Delivery
    queue: str
    gone: str

    def hook_frames(self, put: Hook) -> Put:
        """Pass each frame aiormq's frame reader hands to the channel through ``put``,
        with the channel's own put, which is returned."""
        own: Put = self.channel.frames.put

        async def hooked(item: FrameItem) -> None:
            await put(item, own)

        self.channel.frames.put = hooked  # type: ignore[method-assign]
        return own

    def ask_for_the_gone_queue(self) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self.channel.queue_declare(self.gone, passive=True))

    async def check_all_is_up(self, reopened: aiormq.abc.AbstractChannel) -> None:
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await self.channel.closing  # it was closed, and nothing else
        await reopened.queue_declare(self.queue, passive=True)  # the connection is up
        await self.held.ack()  # on the channel it came on, still open


@contextlib.asynccontextmanager
async def closing_channel() -> AsyncIterator[Closing]:
    queue = f"fedq.test-{uuid.uuid4().hex[:10]}.q"
    gone = f"fedq.test-{uuid.uuid4().hex[:10]}.q"
    async with AmqpTransport(BROKER_URL) as pub, AmqpTransport(BROKER_URL) as sub:
        await pub.declare_queue(queue)
        try:
            await pub.publish("", queue, b"held")
            async with sub.consume(queue, prefetch=1) as deliveries:
                held = await asyncio.wait_for(anext(deliveries), 10)
                assert isinstance(sub, AmqpTransport)
                connection = sub._conn.transport.connection  # type: ignore[union-attr]
                channel = await connection.channel(publisher_confirms=False)
                yield Closing(connection, channel, held, queue, gone)
            assert await pub.queue_depth(queue) == 0
        finally:
            await pub.delete_queue(queue)


async def test_a_channel_opened_before_the_close_is_answered_takes_another_number() -> None:
    async with closing_channel() as closing:
        close_read: asyncio.Future[FrameItem] = asyncio.get_running_loop().create_future()

        async def hold_back_the_close(item: FrameItem, put: Put) -> None:
            # aiormq's frame reader has read the broker's Channel.Close and hands it to
            # the channel, whose own reader answers CloseOk: held back here (a busy loop
            # runs that reader late) until the test hands it over.
            if isinstance(item[1], Channel.Close) and not close_read.done():
                close_read.set_result(item)
            else:
                await put(item)

        hand_over = closing.hook_frames(hold_back_the_close)
        asking = closing.ask_for_the_gone_queue()
        close = await asyncio.wait_for(close_read, 10)
        opened = await asyncio.wait_for(closing.connection.channel(), 10)
        await hand_over(close)
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await asking
        assert opened.number != closing.channel.number
        await closing.check_all_is_up(opened)


async def test_a_close_due_while_the_write_queue_is_full_is_answered() -> None:
    async with closing_channel() as closing:
        write_queue = closing.connection.write_queue

        async def fill_the_write_queue(item: FrameItem, put: Put) -> None:
            await put(item)
            if isinstance(item[1], Channel.Close):
                # The connection's write queue (10 frames) fills up before the channel's
                # reader answers: many channels at work at once. (The writer, woken by
                # the first of these, runs after that reader.)
                while not write_queue.full():
                    write_queue.put_nowait(
                        aiormq.abc.ChannelFrame.marshall(channel_number=0, frames=[Heartbeat()])
                    )

        closing.hook_frames(fill_the_write_queue)
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await closing.ask_for_the_gone_queue()
        with contextlib.suppress(aiormq.exceptions.ChannelNotFoundEntity):
            # Closed: its number was freed first (the table's callback came before).
            await closing.channel.closing
        assert closing.channel.number not in closing.connection.channels
        reopened = await asyncio.wait_for(
            closing.connection.channel(channel_number=closing.channel.number), 10
        )
        await closing.check_all_is_up(reopened)
