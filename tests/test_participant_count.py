"""``fedq participant --count M`` with M above what one connection holds: refused in one
line before anything is declared, on the real RabbitMQ and its negotiated channel_max.

Before the check, the refusal came from the (limit + 1)-th ``consume``, after every earlier
participant had declared its model queue (~2,030 queues left on the broker)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fedq.management import default_management_url
from fedq.messages.amqp import AmqpTransport
from tests.conftest import BROKER_URL
from tests.helpers import run_fedq

pytestmark = [pytest.mark.broker, pytest.mark.processes]


async def consumer_limit() -> int:
    """What this broker lets one fedq connection hold (its channel_max, as negotiated)."""
    transport = AmqpTransport(BROKER_URL)
    async with transport:
        return transport.max_consumers


def queues_of(federation: str) -> list[str]:
    """Every queue named fedq.<federation>.*, as RabbitMQ's management API lists them."""
    url = httpx.URL(default_management_url(BROKER_URL))
    broker = httpx.URL(BROKER_URL.replace("amqp://", "http://"))
    listing = httpx.get(
        f"{url.scheme}://{url.host}:{url.port}/api/queues/%2F",
        params={"columns": "name"},
        auth=(broker.username or "guest", broker.password or "guest"),
        timeout=10,
    ).json()
    return [q["name"] for q in listing if q["name"].startswith(f"fedq.{federation}.")]


def test_a_count_above_the_connections_limit_is_refused_before_any_queue(federation):
    limit = asyncio.run(consumer_limit())
    count = limit + 1
    result = run_fedq(
        "participant", "--federation", federation, "--app", "fedq.apps.synthetic:app",
        "--id", "p", "--count", str(count), "--partition", f"0/{count}",
        "--broker", BROKER_URL,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("fedq:")]
    assert len(error) == 1 and "Traceback" not in result.stderr
    assert f"--count {count}" in error[0] and f"at most {limit}" in error[0]
    assert "--id" in error[0] and "--partition" in error[0]
    assert queues_of(federation) == []
