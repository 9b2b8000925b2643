"""Two promises of the AMQP transport, on the real RabbitMQ: every message fedq publishes is
persistent (delivery mode 2), so a broker restart keeps what a durable queue held; and a
publish caught in an outage is retried until ``outage_seconds``, then given up with one
line naming the broker, never a hang."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
import yarl

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.messages.amqp import AmqpTransport, ConnectionLost
from fedq.messages.topology import UPDATE_KEY, Topology
from fedq.messages.transport import LockLost
from fedq.participant.config import ParticipantConfig
from fedq.simulation import SimulationPlan, simulate
from tests.conftest import BROKER_URL
from tests.helpers import BrokerRelay, took_lock, until_async

pytestmark = pytest.mark.broker


async def test_every_message_of_a_federation_is_persistent(tmp_path, federation):
    """A queue of the test's own, bound to each exchange (updates, models, and control
    with ``#``), gets a copy of every message of a run: each one's delivery mode is 2."""
    topology = Topology(federation)
    tap = f"{federation}.tap"
    async with AmqpTransport(BROKER_URL) as transport:
        await topology.declare_core(transport)
        await transport.declare_queue(tap, durable=False)
        for exchange, key in (
            (topology.updates, UPDATE_KEY),
            (topology.models, ""),
            (topology.control, "#"),
        ):
            await transport.bind(tap, exchange, key)
        try:
            plan = SimulationPlan(
                coordinator=CoordinatorConfig(
                    federation=federation, participants=2, rounds=2, state_dir=tmp_path,
                    linger_seconds=0,
                ),
                participant=ParticipantConfig(federation=federation, participant_id="p"),
                broker_url=BROKER_URL,
            )  # fmt: skip
            await simulate(plan, SyntheticApp(params=10))
            kinds = await _delivery_modes(tap)
        finally:
            await transport.delete_queue(tap)
            await topology.delete(transport, ["p0", "p1"])
    for kind in ("fedq.update.v1", "fedq.model.v1", "fedq.join.v1", "fedq.federation-done.v1"):
        assert kind in kinds, sorted(kinds)
    assert all(modes == {2} for modes in kinds.values()), kinds


async def _delivery_modes(queue: str) -> dict[str, set[int]]:
    """Each message type found in ``queue`` -> the delivery modes it came with."""
    connection = await aio_pika.connect(BROKER_URL)
    found: dict[str, set[int]] = {}
    async with connection:
        channel = await connection.channel()
        source = await channel.get_queue(queue)
        while (message := await source.get(no_ack=True, fail=False)) is not None:
            found.setdefault(str(message.type), set()).add(int(message.delivery_mode or 0))
    return found


async def test_a_publish_in_an_outage_gives_up_after_outage_seconds_with_one_line(federation):
    queue = f"{federation}.outage"
    async with AmqpTransport(BROKER_URL) as direct:
        await direct.declare_queue(queue, durable=False)
        try:
            relay = BrokerRelay(yarl.URL(BROKER_URL))  # the broker gone when it stops
            await relay.start()
            try:
                async with AmqpTransport(relay.url, outage_seconds=2.0) as transport:
                    await transport.publish("", queue, b"before")
                    await relay.stop()
                    with pytest.raises(ConnectionLost) as lost:
                        await asyncio.wait_for(transport.publish("", queue, b"during"), 30)
            finally:
                await relay.stop()
            port = yarl.URL(relay.url).port
            message = str(lost.value)
            assert f"127.0.0.1:{port}" in message and "more than 2 s" in message
            assert "\n" not in message
            assert await direct.queue_depth(queue) == 1  # only what was confirmed
        finally:
            await direct.delete_queue(queue)


async def test_a_lock_taken_while_its_holder_was_cut_off_is_reported_lost(federation):
    """The federation's lock after an outage: the broker dropped it with the holder's
    connection, a rival took it, and the holder, back, must learn it is no longer the
    one coordinator (Coordinator.run then ends) rather than go on beside the rival."""
    lock = f"{federation}.coordinator.lock"
    relay = BrokerRelay(yarl.URL(BROKER_URL))
    await relay.start()
    try:
        async with AmqpTransport(relay.url) as holder, AmqpTransport(BROKER_URL) as rival:
            await holder.hold(lock)
            lost = asyncio.create_task(holder.held_lost())

            await relay.stop()
            await until_async(
                lambda: took_lock(rival, lock),
                what="the rival to take the lock of the cut-off holder",
            )
            assert not lost.done()
            await relay.start()
            with pytest.raises(LockLost, match=lock):
                await asyncio.wait_for(lost, 60)
    finally:
        await relay.stop()
