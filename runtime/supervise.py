"""Running a helper task beside the main work of a process, so that a dead helper stops
the process loudly instead of leaving it waiting for what only the helper would bring.

The coordinator's control consumer (joins, heartbeats, leaves) runs beside its collection
of updates: it never returns, only fails or is cancelled. If it failed in a task nobody
awaited, the coordinator would keep collecting while no join is answered and nobody
counts as alive: a federation stalled in silence (seen once, when a broker restart made a
queue count raise in it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class CompanionEnded(RuntimeError):
    """A helper that should run as long as the main work ended without an error."""


async def alongside(
    main: Coroutine[Any, Any, T], companion: Coroutine[Any, Any, object], name: str
) -> T:
    """``main``'s result, with ``companion`` running beside it and cancelled after. If
    the companion ends first, ``main`` is cancelled and the companion's exception raised
    (CompanionEnded if it ended without one). Cancelling this cancels both."""
    work = asyncio.ensure_future(main)
    side = asyncio.ensure_future(companion)
    try:
        await asyncio.wait({work, side}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        failure = side.exception() if not side.cancelled() else None
        raise failure or CompanionEnded(f"{name} ended while the work went on")
    finally:
        await stopped(work, side)


async def beside(main: Coroutine[Any, Any, T], side: asyncio.Future[Any]) -> T:
    """``main``'s result, with ``side`` (already running, e.g. a publish being confirmed)
    allowed to end meanwhile: if it fails, ``main`` is cancelled and the failure raised; if
    it ends well, ``main`` goes on. ``side`` is left as it is when ``main`` ends first (the
    caller awaits it). Cancelling this cancels ``main``."""
    work = asyncio.ensure_future(main)
    try:
        await asyncio.wait({work, side}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            side.result()  # raises what it failed with (or CancelledError)
        return await work
    finally:
        await stopped(work)


async def stopped(*tasks: asyncio.Future[Any]) -> None:
    """``tasks`` cancelled unless they ended, and waited for; what they raised is dropped
    (the caller is on its way out with an error of its own, or took the result already)."""
    for task in tasks:
        task.cancel()  # nothing for one that ended
    await asyncio.gather(*tasks, return_exceptions=True)
