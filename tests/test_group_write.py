"""Ledger rows that arrive together are written together (coordinator/group_write.py): the
rows that come while one write is under way go in the next, writes never overlap, a failed
write fails each of its rows' callers, and a caller cancelled while it waits leaves its row
to be written."""

from __future__ import annotations

import asyncio
import threading

import pytest

from fedq.coordinator.group_write import GroupWrite


class Writer:
    """A blocking writer that the test lets go write by write."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.started = threading.Semaphore(0)
        self.go = threading.Semaphore(0)
        self.inside = 0
        self.most_inside = 0
        self.fail_next = False

    def __call__(self, rows: list[int]) -> None:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        self.started.release()
        assert self.go.acquire(timeout=10), "let go within 10 s"
        self.inside -= 1
        if self.fail_next:
            self.fail_next = False
            raise OSError("disk full")
        self.groups.append(list(rows))


async def started(writer: Writer) -> None:
    assert await asyncio.to_thread(writer.started.acquire, True, 10), "a write started"


async def test_rows_that_come_during_a_write_go_together_in_the_next() -> None:
    writer = Writer()
    rows = GroupWrite(writer)
    first = asyncio.create_task(rows.add(1))
    await started(writer)  # row 1 is being written on its own
    waiting = [asyncio.create_task(rows.add(n)) for n in (2, 3, 4)]
    writer.go.release()
    await first
    await started(writer)
    writer.go.release()
    await asyncio.gather(*waiting)
    assert writer.groups == [[1], [2, 3, 4]]
    assert writer.most_inside == 1  # one write at a time


async def test_a_failed_write_fails_each_of_its_rows_and_the_next_write_goes_on() -> None:
    writer = Writer()
    rows = GroupWrite(writer)
    first = asyncio.create_task(rows.add(1))
    await started(writer)
    writer.fail_next = True
    writer.go.release()
    with pytest.raises(OSError, match="disk full"):
        await first
    second = asyncio.create_task(rows.add(2))
    await started(writer)
    writer.go.release()
    await second
    assert writer.groups == [[2]]


async def test_a_caller_cancelled_while_it_waits_leaves_its_row_to_be_written() -> None:
    writer = Writer()
    rows = GroupWrite(writer)
    first = asyncio.create_task(rows.add(1))
    await started(writer)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.create_task(rows.add(2))
    writer.go.release()
    await started(writer)
    writer.go.release()
    await second
    assert writer.groups == [[1], [2]]
