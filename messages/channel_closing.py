"""What aiormq gets wrong when RabbitMQ closes a channel, made right.

RabbitMQ closes a channel on a passive declare of a queue that is gone (NOT_FOUND), a
declaration with other arguments (PRECONDITION_FAILED), a publish to a missing exchange.
The client must answer Channel.CloseOk before it opens a channel with that number again:
a Channel.Open for a number RabbitMQ still holds makes it close the whole connection
(CHANNEL_ERROR - second 'channel.open' seen), every consumer on it and every delivery held
unacked with it. aiormq 7.2 breaks that rule two ways:

- **It drops the CloseOk when its write queue is full.** The connection's queue of frames
  to send holds 10; the channel answers with ``put_nowait`` and ignores QueueFull. With a
  declaration on each of the 16 channels of fedq's pool at once, the queue is full often:
  a trace of the frames of the contract test that cancels lookups of a deleted queue at
  every moment showed 2 to 5 CloseOks dropped in each failing run, and the next Channel.Open
  of one of those numbers took the connection down (the test failed about once in 15
  runs, and in CI). :func:`install` makes the channel wait for room instead.
- **It frees the number before the CloseOk is queued.** Its frame reader frees the number
  as soon as the broker's Channel.Close arrives, and only then hands the frame to the
  channel, whose own reader answers a few loop turns later (later still while it waits
  for room). A channel opened in between takes the number when it was the highest.
  :class:`RobustConnection` gives each connection it makes (the first and every one after
  a reconnect) a table of channels that keeps a number until its channel is closed: by
  then the CloseOk is in the write queue, which is first in, first out, ahead of any later
  Channel.Open.

tests/test_amqp_channel_closing.py opens the window of each on purpose. The connection
class also closes itself when its first connect is cancelled (see :class:`RobustConnection`).

What must stay true: exactly one CloseOk answers each Channel.Close; a number is freed
once, and only while it still belongs to the channel that was closed; a channel that never
sent Channel.Open is removed at once, as aiormq does (it deletes it from the table, which
this does not delay).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import aiormq.abc
import aiormq.channel
from pamqp import commands as spec

from fedq.messages.read_pause import PausableReads, count_deliveries


def install() -> None:
    """Make every aiormq channel of this process wait for room in its connection's write
    queue to answer the broker's Channel.Close, instead of dropping the answer. Idempotent."""
    aiormq.channel.Channel._on_close_frame = _answer_close  # type: ignore[method-assign]


async def _answer_close(self: aiormq.channel.Channel, frame: spec.Channel.Close) -> None:
    """aiormq's ``Channel._on_close_frame``, with ``put`` for ``put_nowait``."""
    exc: BaseException = aiormq.channel.exception_by_code(frame)
    self._close_exception = exc
    await self.write_queue.put(
        aiormq.abc.ChannelFrame.marshall(
            channel_number=self.number, frames=[spec.Channel.CloseOk()]
        )
    )
    self._Channel__close_event.set()  # type: ignore[attr-defined]
    raise exc


class HeldChannelNumbers(dict[int, Any]):
    """aiormq's table of a connection's channels by number, whose ``pop`` (what its frame
    reader does on Channel.Close and Channel.CloseOk) keeps the number until the channel
    is closed, and gives each new channel a queue of frames that counts its basic.deliver
    frames (:func:`~.read_pause.count_deliveries`, for a consumer whose reads are paced)."""

    def __setitem__(self, number: int, channel: Any) -> None:
        count_deliveries(channel)
        super().__setitem__(number, channel)

    def pop(self, number: int, *default: Any) -> Any:
        channel = self.get(number)
        if channel is None or channel.is_closed:
            return super().pop(number, *default)
        channel.closing.add_done_callback(lambda _: self._release(number, channel))
        return channel

    def _release(self, number: int, channel: aiormq.abc.AbstractChannel) -> None:
        if self.get(number) is channel:
            del self[number]


def hold_channel_numbers(connection: aiormq.abc.AbstractConnection) -> None:
    """Make ``connection`` keep each channel's number until the channel is closed.
    Idempotent."""
    if not isinstance(connection.channels, HeldChannelNumbers):
        connection.channels = HeldChannelNumbers(connection.channels)


class RobustConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection whose every underlying connection holds its channels'
    numbers (:func:`hold_channel_numbers`), from before it restores any channel; whose
    socket reads can be paused (``reads``, :mod:`~.read_pause`); and that closes itself
    when its first connect does not end connected.

    aio-pika connects in a task of the connection's own, which outlives the caller of
    ``connect`` and, cancelled while it connects, takes that for a failed attempt and tries
    again. A caller cancelled while it waited for a first connect (a coordinator stopping
    as one of its consumers opens a connection) left a connection nobody could close,
    whose task a loop's shutdown (cancelling each task once) then waited on for ever: a
    test's teardown hung 600 s so in CI (tests/test_amqp_connecting.py)."""

    def __init__(self, url: Any, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any):
        super().__init__(url, loop, **kwargs)
        self.reads = PausableReads()
        self.kwargs["transport_factory"] = self.reads

    async def connect(self, timeout: aiormq.abc.TimeoutType = None) -> None:  # noqa: ASYNC109 (aio-pika's signature)
        try:
            await super().connect(timeout)
        except BaseException:
            await self.close()  # marks it closed first: its task ends at its next await
            raise

    async def _on_connected(self) -> None:
        if self.transport is not None:
            hold_channel_numbers(self.transport.connection)
        await super()._on_connected()
