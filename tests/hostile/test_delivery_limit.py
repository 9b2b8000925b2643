"""The broker's delivery limit, the last line against a message that takes down whoever
consumes it: after DELIVERY_LIMIT deliveries that ended with its consumer's channel gone,
the updates and control queues dead-letter it, where a fresh coordinator never meets it.
And queues an earlier fedq declared with other arguments do not stop the coordinator."""

from __future__ import annotations

import asyncio

import aiormq
import pytest

from fedq.messages.amqp import AmqpTransport
from fedq.messages.topology import DELIVERY_LIMIT, UPDATE_KEY, Topology, participant_key
from fedq.messages.transport import TransportError
from tests.conftest import BROKER_URL

pytestmark = pytest.mark.broker


async def _take_and_crash(queue: str) -> bytes:
    """Receive one message of ``queue`` and close the channel without settling it: what a
    consumer that the message takes down does."""
    connection = await aiormq.connect(BROKER_URL)
    try:
        channel = await connection.channel()
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            if not got.done():
                got.set_result(message.body)

        await channel.basic_qos(prefetch_count=1)
        await channel.basic_consume(queue, on_message)
        body = await asyncio.wait_for(got, 10)
        await channel.close()
        return body
    finally:
        await connection.close()


@pytest.mark.parametrize("where", ["updates", "control"])
async def test_a_message_that_crashes_its_consumer_is_dead_lettered_at_the_limit(federation, where):
    topology = Topology(federation)
    poison = f"poison on {where}".encode()
    async with AmqpTransport(BROKER_URL) as transport:
        await topology.declare_core(transport)
        try:
            if where == "updates":
                await transport.publish(topology.updates, UPDATE_KEY, poison, mandatory=True)
                queue = topology.updates
            else:
                key = participant_key("heartbeat", "p0")
                await transport.publish(topology.control, key, poison, mandatory=True)
                queue = topology.coordinator
            for _ in range(DELIVERY_LIMIT + 1):
                assert await _take_and_crash(queue) == poison
            async with transport.consume(topology.rejected, prefetch=1) as dead:
                copy = await asyncio.wait_for(anext(dead), 10)
                await copy.ack()
            assert copy.body == poison
            assert copy.headers["x-death"][0]["reason"] == "delivery_limit"
            assert await transport.queue_depth(queue) == 0
        finally:
            await topology.delete(transport, [])


async def test_queues_of_an_earlier_fedq_do_not_stop_the_coordinator(federation):
    """The updates queue as a quorum queue without the delivery limit keeps its updates;
    the control queue as a classic queue is declared anew as a quorum queue."""
    topology = Topology(federation)
    old_updates = {k: v for k, v in topology.updates_arguments().items() if k != "x-delivery-limit"}
    async with AmqpTransport(BROKER_URL) as transport:
        try:
            await transport.declare_exchange(topology.updates, "direct")
            await transport.declare_queue(topology.updates, arguments=old_updates)
            await transport.bind(topology.updates, topology.updates, UPDATE_KEY)
            await transport.declare_queue(topology.coordinator)
            await transport.publish(topology.updates, UPDATE_KEY, b"waiting", mandatory=True)

            await topology.declare_core(transport)

            assert await transport.queue_depth(topology.updates) == 1
            # Declared anew with the quorum arguments: redeclaring so is accepted ...
            await transport.declare_queue(
                topology.coordinator, arguments=topology.coordinator_arguments()
            )
            # ... and as the classic queue it was is refused.
            with pytest.raises(TransportError, match="PRECONDITION_FAILED"):
                await transport.declare_queue(topology.coordinator)
        finally:
            await topology.delete(transport, [])
