"""How long the coordinator's consumer may leave its socket unread (:mod:`fedq.messages.
read_pause`): never as long as aiormq waits for a frame before it gives a connection up."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from yarl import URL

from fedq.messages.read_pause import LONGEST_PAUSE, PausableReads, _ReadGate, longest_pause
from tests.helpers import until_async


@pytest.mark.parametrize(
    ("url", "seconds"),
    [
        ("amqp://h/", LONGEST_PAUSE),
        ("amqp://h/?heartbeat=60", LONGEST_PAUSE),
        ("amqp://h/?heartbeat=5", 4.5),  # aiormq gives up after (5 + 1) x 3 = 18 s
        ("amqp://h/?heartbeat=0", LONGEST_PAUSE),  # no heartbeat, no such limit
        ("amqp://h/?heartbeat=soon", LONGEST_PAUSE),
    ],
)
def test_a_pause_ends_well_before_aiormq_would_give_the_connection_up(url: str, seconds: float):
    assert longest_pause(URL(url)) == seconds


async def test_the_stream_readers_own_resume_does_not_undo_a_pause() -> None:
    """asyncio's stream reader pauses its transport when its buffer is full and resumes it
    once drained; a pause held meanwhile must outlast that resume (it did not: the reads
    went on while the coordinator counted them paused)."""
    ours, theirs = socket.socketpair()
    try:
        reader, writer = await asyncio.open_connection(sock=ours, limit=1024)
        transport: Any = writer.transport
        gate = _ReadGate(transport)
        theirs.sendall(b"x" * 8192)
        while transport.is_reading():  # the reader pauses at twice its limit
            await reader._wait_for_data("test")  # type: ignore[attr-defined]
        gate.held = True
        gate.apply()
        await reader.readexactly(len(reader._buffer))  # type: ignore[attr-defined]
        assert not transport.is_reading(), "the drained reader resumed a held pause"
        gate.held = False
        gate.apply()
        assert transport.is_reading()
        writer.close()
    finally:
        theirs.close()


async def test_a_pause_that_runs_out_reads_again_and_says_what_held_it(caplog) -> None:
    """A consumer that holds its bodies past the longest pause must not stall the
    connection (aiormq would give it up): the reads resume, the pause is counted, and the
    warning names what was held, so that a stalled run explains itself in its log."""
    ours, theirs = socket.socketpair()
    try:
        _, writer = await asyncio.open_connection(sock=ours)
        transport: Any = writer.transport
        reads = PausableReads()
        reads._gate = _ReadGate(transport)  # what ``create`` does for aiormq's connection
        reads._longest = 0.05
        reads.holding = lambda: "3 read and not yet delivered, 4 in hand"
        reads.pause()
        assert reads.paused and not transport.is_reading()

        async def ran_out() -> bool:
            return reads.ran_out > 0

        await until_async(ran_out, what="the pause to run out")
        assert reads.ran_out == 1
        assert not reads.paused and transport.is_reading()
        warned = [r.getMessage() for r in caplog.records if r.name == "fedq.amqp"]
        assert any("3 read and not yet delivered, 4 in hand" in m for m in warned), warned
        writer.close()
    finally:
        theirs.close()
