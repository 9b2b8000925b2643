"""Control messages cost the coordinator little whatever is sent: a join is answered with
the model (for a chunked model, hundreds of megabytes), so 300 joins from one participant
get it once, and 300 joins under made-up ids (no queue) get nothing. The coordinator runs
on the real RabbitMQ; its transport is the real one, counting what it publishes to model
queues."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import encode_message
from fedq.messages.schema import MESSAGE_TYPES, Heartbeat, Join
from fedq.messages.topology import Topology
from tests.conftest import BROKER_URL
from tests.helpers import polled, until_async

pytestmark = pytest.mark.broker

FLOOD = 300


class CountingTransport(AmqpTransport):
    """The real AMQP transport, counting publishes per routing key."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.published: Counter[str] = Counter()

    async def publish(self, exchange: str, routing_key: str, body: bytes, **kwargs: Any) -> None:
        self.published[routing_key] += 1
        await super().publish(exchange, routing_key, body, **kwargs)


async def test_a_join_flood_gets_one_model_and_made_up_ids_get_nothing(tmp_path, federation):
    topology = Topology(federation)
    config = CoordinatorConfig(
        federation=federation, participants=1, rounds=1, state_dir=tmp_path, linger_seconds=0
    )
    own = CountingTransport(BROKER_URL)
    async with own, AmqpTransport(BROKER_URL) as sender:
        await topology.declare_core(sender)
        await topology.declare_participant(sender, "p0")
        coordinator = Coordinator(config, SyntheticApp(params=1000), own)
        run = asyncio.create_task(coordinator.run())
        try:
            await until_async(  # v0 is open: its model went to the fanout
                polled(lambda: own.published[""]), what="model v0 published"
            )
            await topology.declare_participant(sender, "marker")  # empty: a join is answered
            for i in range(FLOOD):
                for event in (
                    Join(federation=federation, participant="p0"),
                    Join(federation=federation, participant=f"nobody-{i}"),
                    Heartbeat(federation=federation, participant=f"ghost-{i}"),
                ):
                    key = f"{event.kind}.{event.participant}"
                    await sender.publish(
                        topology.control, key, encode_message(event), type=MESSAGE_TYPES[event.kind]
                    )
            # Then a join from a participant with an empty queue: the coordinator handles
            # control messages one after another, in order, so once it answered this one
            # (a join is answered), it handled the whole flood.
            marker = Join(federation=federation, participant="marker")
            await sender.publish(
                topology.control, "join.marker", encode_message(marker),
                type=MESSAGE_TYPES["join"],
            )  # fmt: skip
            to_marker = topology.model_queue("marker")
            await until_async(
                polled(lambda: own.published[to_marker]),
                what="the marker's join answered with the model",
            )
            assert own.published[to_marker] == 1
            to_p0 = own.published[topology.model_queue("p0")]
            to_nobody = sum(n for key, n in own.published.items() if ".model.nobody-" in key)
            assert to_p0 <= 1  # its queue holds the model already (the fanout's)
            assert to_nobody == 0
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await topology.delete(sender, ["p0", "marker"])
