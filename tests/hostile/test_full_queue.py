"""A flood fills the updates queue to its byte limit: RabbitMQ then refuses new messages
(reject-publish), and an honest participant's update is published again until the queue
has room, not lost. Here the queue is full before the participant sends, and nothing
drains it until the test does."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import decode_message, encode_message
from fedq.messages.schema import MESSAGE_TYPES, ModelMeta, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology
from fedq.messages.transport import QueueFull
from fedq.participant.config import ParticipantConfig
from fedq.participant.worker import Participant
from fedq.runtime.sent_log import read_sent
from tests.conftest import BROKER_URL
from tests.helpers import polled, until_async, until_consumers_async

pytestmark = pytest.mark.broker

LIMIT = 1 << 20
PARAMS = 50_000  # a 200 kB update: it does not fit beside the flood


async def test_an_update_refused_by_a_full_queue_is_published_again_until_taken(
    tmp_path, federation
):
    topology = replace(Topology(federation), updates_max_bytes=LIMIT)
    app = SyntheticApp(params=PARAMS)
    sent_log = tmp_path / "sent.jsonl"
    config = ParticipantConfig(federation=federation, participant_id="p0", sent_log=sent_log)
    async with AmqpTransport(BROKER_URL) as own, AmqpTransport(BROKER_URL) as flooder:
        await topology.declare_core(own)
        flood = 0
        while True:  # fill the queue: 100 kB of garbage at a time until it refuses
            try:
                await flooder.publish(topology.updates, UPDATE_KEY, b"\xc1" * 100_000)
                flood += 1
            except QueueFull:
                break
        assert flood >= LIMIT // 100_000  # a quorum queue takes the one that crosses it
        participant = Participant(config, app, own)
        running = asyncio.create_task(participant.run())
        try:
            # It consumes its queue: then give it a model.
            await until_consumers_async(BROKER_URL, topology.model_queue("p0"))
            model = ModelMeta(federation=federation, version=0, round=1, rounds_total=1)
            await own.publish(
                topology.models, "", encode_message(model, app.initial_weights()),
                type=MESSAGE_TYPES["model"],
            )  # fmt: skip
            await until_async(  # the broker refused its update, and again on the retry
                polled(lambda: participant.stats.publishes_refused),
                lambda refused: refused >= 2,
                what="the participant's update refused twice",
            )
            assert read_sent(sent_log) == []  # not confirmed, so not logged as sent
            assert await own.queue_depth(topology.updates) == flood

            async with own.consume(topology.updates, prefetch=flood + 1) as inbox:
                bodies = []
                for _ in range(flood):  # drain the flood: now there is room
                    delivery = await asyncio.wait_for(anext(inbox), 10)
                    bodies.append(bytes(delivery.body))
                    await delivery.ack()
                update = await asyncio.wait_for(anext(inbox), 30)
                await update.ack()
            meta = decode_message(update.body).meta(UpdateMeta)
            assert meta.participant == "p0" and meta.base_version == 0
            # The broker hands it to us and confirms it to the participant at once;
            # the participant logs it as sent when that confirm arrives.
            sent = await until_async(
                polled(lambda: read_sent(sent_log)), bool, what="the update logged as sent"
            )
            assert [s.update_id for s in sent] == [meta.update_id]
            assert all(b.startswith(b"\xc1") for b in bodies)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await topology.delete(own, ["p0"])
