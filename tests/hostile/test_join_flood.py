"""Control messages cost the coordinator little whatever is sent: a join is answered with
the model (for a chunked model, hundreds of megabytes), so 300 joins from one participant
get it once, and 300 joins under made-up ids (no queue) get nothing. The coordinator runs
on the real RabbitMQ; its transport is the real one, counting what it publishes to model
queues."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import encode_message
from fedq.messages.schema import MESSAGE_TYPES, Heartbeat, Join
from fedq.messages.topology import Topology
from tests.conftest import BROKER_URL

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
            for _ in range(300):  # until v0 is open: its model went to the fanout
                if own.published[""]:
                    break
                await asyncio.sleep(0.05)
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
            for _ in range(300):  # until the coordinator has taken every control message
                if await sender.queue_depth(topology.coordinator) == 0:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            to_p0 = own.published[topology.model_queue("p0")]
            to_nobody = sum(n for key, n in own.published.items() if ".model.nobody-" in key)
            assert to_p0 <= 1  # its queue holds the model already (the fanout's)
            assert to_nobody == 0
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await topology.delete(sender, ["p0"])
