"""The tests' one bounded wait (tests/helpers.py): it returns the state waited for, and
when time runs out it fails naming what it waited for and the last value it saw, never
falling through as if the state had come."""

from __future__ import annotations

import subprocess
import sys
from itertools import count
from pathlib import Path

import pytest

from tests.helpers import polled, run_fedq, until, until_async, until_line

pytestmark = pytest.mark.processes


def test_until_returns_the_first_value_that_is_done():
    values = count()
    assert until(lambda: next(values), lambda v: v >= 3, what="three", every=0) == 3


def test_until_fails_naming_what_it_waited_for_and_the_last_value_seen():
    with pytest.raises(AssertionError, match=r"not within 0\.05 s: the answer \(last seen: 41\)"):
        until(lambda: 41, lambda v: v == 42, what="the answer", within=0.05, every=0.01)


async def test_until_async_returns_and_fails_alike():
    values = count()
    assert await until_async(polled(lambda: next(values)), lambda v: v >= 2, what="two") == 2
    with pytest.raises(AssertionError, match=r"v3 committed \(last seen: 2\)"):
        await until_async(polled(lambda: 2), lambda v: v >= 3, what="v3 committed", within=0.05)


def test_until_line_fails_at_once_when_the_process_ended_without_the_line(tmp_path: Path):
    log = tmp_path / "out.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-c", "print('starting'); print('ready')"], stdout=handle
        )
    assert "ready" in until_line(log, "ready", process, within=30)
    process.wait(timeout=30)
    with pytest.raises(AssertionError, match=r"ended \(0\) before 'never'"):
        until_line(log, "never", process, within=30)


def test_a_fedq_command_that_does_not_end_fails_with_its_stacks_and_output(tmp_path):
    """run_fedq gives up before pytest's own timeout would, which keeps nothing of the
    command: the failure shows where its threads were and what it printed."""
    with pytest.raises(AssertionError, match="did not end within 8 s; its threads") as failed:
        run_fedq(
            "simulate", "--app", "fedq.apps.synthetic:app", "-n", "2", "--rounds", "100000",
            "--state-dir", str(tmp_path), timeout=8,
        )  # fmt: skip
    assert "Thread" in str(failed.value) and "fedq/cli" in str(failed.value)
