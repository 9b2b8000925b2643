"""``fedq teardown`` on the real RabbitMQ: nothing named fedq.F.* is left, and a running
coordinator is not pulled from under its feet unless forced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from fedq.management import default_management_url
from fedq.messages.amqp import AmqpTransport
from fedq.messages.topology import Topology
from fedq.messages.transport import TransportError
from fedq.teardown import SHOWN_NAMES, Removed
from tests.conftest import BROKER_URL
from tests.helpers import run_fedq, start_fedq

pytestmark = [pytest.mark.broker, pytest.mark.processes]


def names_left(federation: str) -> list[str]:
    """Every queue and exchange whose name starts with fedq.<federation>., as RabbitMQ's
    management API lists them."""
    url = httpx.URL(default_management_url(BROKER_URL))
    base = f"{url.scheme}://{url.host}:{url.port}"
    broker = httpx.URL(BROKER_URL.replace("amqp://", "http://"))
    auth = (broker.username or "guest", broker.password or "guest")
    found = []
    for kind in ("queues", "exchanges"):
        listing = httpx.get(f"{base}/api/{kind}/%2F", auth=auth, timeout=10).json()
        found += [x["name"] for x in listing if x["name"].startswith(f"fedq.{federation}.")]
    return found


async def declare(federation: str) -> None:
    async with AmqpTransport(BROKER_URL) as transport:
        topology = Topology(federation)
        await topology.declare_core(transport)
        for participant in ("p0", "p1"):
            await topology.declare_participant(transport, participant)


def test_teardown_leaves_no_queue_or_exchange_of_the_federation(federation):
    asyncio.run(declare(federation))
    assert len(names_left(federation)) == 8  # 5 queues (2 participants'), 3 exchanges
    result = run_fedq("teardown", "--federation", federation, "--broker", BROKER_URL)
    assert result.returncode == 0, result.stderr
    assert "removed 5 queues (2 participants' model queues) and 3 exchanges" in result.stderr
    assert names_left(federation) == []
    again = run_fedq("teardown", "--federation", federation, "--broker", BROKER_URL)
    assert again.returncode == 0 and "nothing was there" in again.stderr


def test_teardown_refuses_while_a_coordinator_consumes_unless_forced(federation):
    async def scenario() -> tuple[int, str, int]:
        await declare(federation)
        async with (
            AmqpTransport(BROKER_URL) as transport,
            transport.consume(Topology(federation).updates, prefetch=1),
        ):
            refused = await asyncio.to_thread(
                run_fedq, "teardown", "--federation", federation, "--broker", BROKER_URL
            )
        forced = await asyncio.to_thread(
            run_fedq, "teardown", "--federation", federation, "--broker", BROKER_URL, "--force"
        )
        return refused.returncode, refused.stderr, forced.returncode

    status, stderr, forced = asyncio.run(scenario())
    assert status == 2 and "a coordinator of" in stderr and "--force" in stderr
    assert forced == 0 and names_left(federation) == []


def test_an_unreachable_management_api_is_one_line_saying_what_to_do(federation):
    result = run_fedq(
        "teardown", "--federation", federation, "--broker", BROKER_URL,
        "--management-url", "http://guest:guest@127.0.0.1:1",
    )  # fmt: skip
    assert result.returncode == 2 and "rabbitmq_management" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_summary_counts_every_name_but_lists_only_a_few():
    """1,000 participants' queues made a 50 kB line; now it is counts and a few names."""
    topology = Topology("f")
    queues = [topology.updates] + [topology.model_queue(f"p{i}") for i in range(1000)]
    line = Removed(queues, [topology.models, topology.control]).summary("f")
    assert line.startswith("removed 1001 queues (1000 participants' model queues) and 2 ")
    assert line.count("fedq.f.") == SHOWN_NAMES
    assert line.endswith(f", ... and {1003 - SHOWN_NAMES} more")
    assert len(line) < 500
    few = Removed([topology.updates], []).summary("f")
    assert few.endswith(f": {topology.updates}") and "more" not in few


def test_a_coordinator_whose_queues_are_torn_down_stops_with_one_line(tmp_path, federation):
    """``fedq teardown --force`` under a running coordinator: it used to go on silently,
    waiting for updates on a queue that no longer existed."""
    coordinator = start_fedq(
        "coordinator", "--app", "fedq.apps.synthetic:app", "--federation", federation,
        "-n", "2", "-r", "1", "--state-dir", str(tmp_path / "state"), "--broker", BROKER_URL,
        log=tmp_path / "coordinator.log",
    )  # fmt: skip
    try:
        topology = Topology(federation)

        async def consumed() -> bool:
            async with AmqpTransport(BROKER_URL) as transport:
                return await transport.queue_consumers(topology.updates) > 0

        deadline = time.monotonic() + 60
        while not asyncio.run(_quiet(consumed)):
            assert coordinator.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        forced = run_fedq("teardown", "--federation", federation, "--broker", BROKER_URL, "--force")
        assert forced.returncode == 0, forced.stderr
        status = coordinator.wait(timeout=60)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
    output = (tmp_path / "coordinator.log").read_text()
    assert status != 0, output
    assert "was deleted on the broker" in output.strip().splitlines()[-1]
    assert "Traceback" not in output


async def _quiet(check: Callable[[], Awaitable[bool]]) -> bool:
    """``check()``, or False while what it asks about does not exist yet."""
    try:
        return await check()
    except TransportError:
        return False
