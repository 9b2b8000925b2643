"""Rows written together: as few trips to a blocking writer's thread as their arrival allows.

The coordinator settles refusals in floods (N = 1,000 with a quorum of 100: 900 stale
updates a version), and each ledger row written on its own is a transaction, a trip to a
worker thread and a write to the disk (``synchronous=FULL``). A :class:`GroupWrite` gives
each row to the write already waiting to start, if any (group commit): the rows that arrive
while one write is under way go together in the next, and writes run one at a time, in
the order they were started.

What must stay true: :meth:`GroupWrite.add` returns only once its row was written, or raises
what the write of its group raised; a caller cancelled while waiting leaves the write to go
on for the others (a row handed over is written, whoever waits for it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Group(Generic[T]):
    rows: list[T] = field(default_factory=list)
    #: The write of these rows, once its first row came.
    written: asyncio.Task[None] | None = None


class GroupWrite(Generic[T]):
    def __init__(self, write: Callable[[list[T]], None]) -> None:
        """``write``: blocking, called in a worker thread with the rows of one group."""
        self._write = write
        #: The group new rows join, until its write starts.
        self._open: _Group[T] = _Group()
        #: The last write started: the next one waits for it.
        self._last: asyncio.Task[None] | None = None

    async def add(self, row: T) -> None:
        """Write ``row`` with whatever else is waiting; returns once it is written."""
        group = self._open
        group.rows.append(row)
        if group.written is None:
            group.written = asyncio.create_task(self._write_after(self._last, group))
            group.written.add_done_callback(_retrieved)
            self._last = group.written
        await asyncio.shield(group.written)

    async def _write_after(self, previous: asyncio.Task[None] | None, group: _Group[T]) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its own callers'
        self._open = _Group()  # from now on, rows go to the next write
        await asyncio.to_thread(self._write, group.rows)


def _retrieved(task: asyncio.Task[None]) -> None:
    """A write whose every caller was cancelled: its failure is not an orphan warning (the
    next write of the same writer meets the same cause)."""
    if not task.cancelled():
        task.exception()
