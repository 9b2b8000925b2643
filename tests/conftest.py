"""Shared fixtures. Broker tests talk to the real RabbitMQ at FEDQ_TEST_BROKER_URL."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from fedq.messages.amqp import AmqpTransport
from fedq.messages.memory import MemoryBroker, MemoryTransport
from fedq.messages.transport import Transport

BROKER_URL = os.environ.get("FEDQ_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
def federation() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["memory", "amqp"])
async def transport_pair(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Transport, Transport]]:
    """Two connections to one broker: the embedded one or the real RabbitMQ."""
    if request.param == "memory":
        broker = MemoryBroker()
        a: Transport = MemoryTransport(broker)
        b: Transport = MemoryTransport(broker)
    else:
        a, b = AmqpTransport(BROKER_URL), AmqpTransport(BROKER_URL)
    async with a, b:
        yield a, b
