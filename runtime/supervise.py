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
        for task in (work, side):
            task.cancel()
        await asyncio.gather(work, side, return_exceptions=True)
