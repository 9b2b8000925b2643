"""A connection attempt cancelled half-way leaves nothing running behind it.

aio-pika's robust connection connects in a task of its own, which outlives the caller
that asked for the connection and, cancelled while it connects, takes that for a failed
attempt and tries again (``Connection attempt ... cancelled. Reconnecting``). A connection
nobody holds any more therefore kept a task that a loop shutting down (cancelling each
task once, as ``asyncio.run`` and pytest-asyncio do) waited on for ever: CI saw a test's
teardown hang for its whole 600 s so. A coordinator stopping while one of its consumers
opens its own connection (``consumers_apart``) is that case in a real process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from fedq.messages.amqp import AmqpTransport
from tests.helpers import free_port

pytestmark = pytest.mark.broker


@contextlib.asynccontextmanager
async def silent_broker() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A URL whose server takes TCP connections and never says a word of AMQP: a connect
    there waits (for its timeout) in the middle of the handshake. Also an event set once
    it has taken a connection."""
    port = free_port()
    taken: list[asyncio.StreamWriter] = []
    took = asyncio.Event()

    async def take(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.append(writer)
        took.set()

    server = await asyncio.start_server(take, "127.0.0.1", port)
    try:
        yield f"amqp://guest:guest@127.0.0.1:{port}/", took
    finally:
        server.close()
        for writer in taken:
            writer.transport.abort()


async def test_a_connect_cancelled_mid_handshake_leaves_no_task_a_shutdown_waits_on() -> None:
    before = asyncio.all_tasks()
    async with silent_broker() as (url, took):
        transport = AmqpTransport(url, connect_timeout=60)
        connecting = asyncio.create_task(transport.connect())
        await asyncio.wait_for(took.wait(), 30)
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        # What a loop's shutdown does: cancel each task left, once, and wait for them.
        left = asyncio.all_tasks() - before - {asyncio.current_task()}
        for task in left:
            task.cancel()
        pending = (await asyncio.wait(left, timeout=30))[1] if left else set()
        stuck = [task.get_coro() for task in pending]
        await cancel_until_done(pending)  # so that this test's own teardown ends
        assert not stuck, stuck


async def cancel_until_done(tasks: set[asyncio.Task[object]]) -> None:
    """Cancel ``tasks`` again and again, until each has ended (one that takes a
    cancellation for a failed attempt gets another at its next await)."""
    while tasks:
        for task in tasks:
            task.cancel()
        tasks = (await asyncio.wait(tasks, timeout=0.1))[1]
