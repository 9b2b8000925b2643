"""A helper task beside the main work: its death ends the work, loudly."""

from __future__ import annotations

import asyncio

import pytest

from fedq.runtime.supervise import CompanionEnded, alongside


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
