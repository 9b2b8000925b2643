"""The shared broker is left as the tests found it (tests/broker_hygiene.py): a test that
leaves something there fails the run, named, and what it left is deleted."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from tests.broker_hygiene import BrokerInventory

pytestmark = [pytest.mark.broker, pytest.mark.processes]

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_a_queue_left_on_the_shared_broker_fails_the_run_names_its_test_and_goes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: list[str]
) -> None:
    """Also with tests side by side (``-n 2``): the workers' watches reach the controller,
    which names the test (or the tests, when another ran beside it and saw the queue too)."""
    own = f"hygiene{uuid.uuid4().hex[:8]}"
    queue = f"fedq.{own}.left"
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("FEDQ_TEST_SETTLE_SECONDS", "1")  # the queue left never goes
    # The inner session watches only its own names: this session's tests run beside it.
    monkeypatch.setenv("FEDQ_TEST_WATCH_ONLY", own)
    pytester.makeconftest(
        "from tests.conftest import *  # noqa: F403 (the suite's hooks and fixtures)\n"
    )
    pytester.makepyfile(
        test_leaves=textwrap.dedent(
            f"""
            import pytest
            from fedq.messages.amqp import AmqpTransport
            from tests.conftest import BROKER_URL

            @pytest.mark.broker
            async def test_tidy(federation):
                async with AmqpTransport(BROKER_URL) as transport:
                    await transport.declare_queue(f"fedq.{{federation}}.updates")

            @pytest.mark.broker
            async def test_leaves_a_queue():
                async with AmqpTransport(BROKER_URL) as transport:
                    await transport.declare_queue({queue!r})
            """
        )
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", "addopts=", "-o", "asyncio_mode=auto",
        "-o", "asyncio_default_fixture_loop_scope=function", *workers,
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*left on the shared broker*",
            f"queue '{queue}' on vhost '/', first seen after *test_leaves.py::test_leaves_a_queue*",
            "1 left by the tests: deleted now; the run fails",
        ]
    )
    after = BrokerInventory.read()
    assert after is not None
    assert not any(name == queue for _, _, name in after.entities)
