"""A helper task beside the main work: its death ends the work, loudly."""

from __future__ import annotations

import asyncio

import pytest

from fedq.runtime.supervise import CompanionEnded, alongside, beside


async def test_the_main_result_comes_back_and_the_companion_is_cancelled():
    cancelled = asyncio.Event()

    async def companion() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def main() -> int:
        return 7

    assert await alongside(main(), companion(), "helper") == 7
    assert cancelled.is_set()


async def test_a_companion_that_fails_cancels_the_main_work_and_raises():
    stopped = asyncio.Event()

    async def main() -> None:
        try:
            await asyncio.Event().wait()  # waits for what only the companion would bring
        finally:
            stopped.set()

    async def companion() -> None:
        raise ConnectionError("control consumer lost")

    with pytest.raises(ConnectionError, match="control consumer lost"):
        await asyncio.wait_for(alongside(main(), companion(), "control"), 5)
    assert stopped.is_set()


async def test_a_companion_that_just_returns_is_an_error_too():
    async def main() -> None:
        await asyncio.Event().wait()

    async def companion() -> None:
        return None

    with pytest.raises(CompanionEnded, match="control ended"):
        await asyncio.wait_for(alongside(main(), companion(), "control"), 5)


async def test_beside_a_side_task_that_fails_cancels_the_main_work_and_raises():
    """A model's fanout that fails while the version collects ends the collection."""
    stopped = asyncio.Event()

    async def collect() -> None:
        try:
            await asyncio.Event().wait()  # updates that never come without the model
        finally:
            stopped.set()

    async def fanout() -> None:
        raise ConnectionError("model publish refused")

    with pytest.raises(ConnectionError, match="model publish refused"):
        await asyncio.wait_for(beside(collect(), asyncio.ensure_future(fanout())), 5)
    assert stopped.is_set()


async def test_beside_a_side_task_that_ends_well_leaves_the_main_work_going():
    """A fanout confirmed early: the collection goes on to its own end, and its result."""
    confirmed = asyncio.Event()

    async def collect() -> str:
        await confirmed.wait()
        for _ in range(10):  # still collecting, loop turns after the fanout ended
            await asyncio.sleep(0)  # sleep-ok: a loop turn, not a wait
        return "quorum"

    async def fanout() -> None:
        confirmed.set()

    assert await asyncio.wait_for(beside(collect(), asyncio.ensure_future(fanout())), 5) == (
        "quorum"
    )
