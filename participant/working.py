"""How many virtual participants of one process work on a model at once.

M virtual participants in one process receive each model at about the same moment. One at
work holds its float copy of the weights, the trained weights, the delta and the encoded
update until the broker confirms it. Left alone, all M would hold these together (the thread
pool serves them in turn, so every copy is made before the first training ends): O(M x
model) memory, 1.5 GB for 1,000 participants of 100,000 parameters. With ``SLOTS`` at work
at once, as many as the default thread pool has threads (so the work itself is not slowed),
the others wait holding nothing but the model body they share (the transport keeps one copy
of it per process): O(SLOTS x model).

What must stay true: a participant waiting on something that is not work (``pausing``: an
async app awaiting remote training, an experiment's emulated straggler) holds no slot, so
it does not hold up the others; a cancelled participant never gives back a slot it does not
hold.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

#: Participants of one process (one event loop) at work at once: the default thread pool's
#: size, ``min(32, cores + 4)``.
SLOTS = min(32, (os.cpu_count() or 1) + 4)

_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


class _Slot:
    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self.semaphore = semaphore
        self.held = False


_current: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar(
    "fedq_working_slot", default=None
)


def _semaphore() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    semaphore = _semaphores.get(loop)
    if semaphore is None:
        semaphore = _semaphores[loop] = asyncio.Semaphore(SLOTS)
    return semaphore


@asynccontextmanager
async def working() -> AsyncIterator[None]:
    """Hold one of the process's slots while working on a model."""
    slot = _Slot(_semaphore())
    await slot.semaphore.acquire()
    slot.held = True
    token = _current.set(slot)
    try:
        yield
    finally:
        _current.reset(token)
        if slot.held:
            slot.semaphore.release()


@asynccontextmanager
async def pausing() -> AsyncIterator[None]:
    """Inside ``working()``, give the slot back for a while (a wait that is not work, such
    as an async app's remote training or an emulated straggler's delay), and take one
    again after. Outside it, nothing."""
    slot = _current.get()
    if slot is None or not slot.held:
        yield
        return
    slot.held = False
    slot.semaphore.release()
    try:
        yield
    finally:
        await slot.semaphore.acquire()
        slot.held = True
