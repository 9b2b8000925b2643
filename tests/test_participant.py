"""A participant on its own: what it does with what arrives in its queue."""

from __future__ import annotations

import asyncio

import numpy as np

from fedq.apps.synthetic import SyntheticApp
from fedq.messages.chunks import encode_chunks
from fedq.messages.codec import decode_message, encode_message
from fedq.messages.schema import MESSAGE_TYPES, FederationDone, ModelMeta, UpdateMeta
from fedq.messages.topology import FEDERATION_DONE, Topology
from fedq.participant.config import ParticipantConfig
from fedq.participant.worker import Participant, TrainedRound


async def test_a_participant_trains_on_each_new_model_skips_garbage_and_stops_when_done(
    transport_pair, federation
):
    coordinator, transport = transport_pair
    topology = Topology(federation)
    await topology.declare_core(coordinator)
    app = SyntheticApp(params=8)
    seen: list[TrainedRound] = []
    participant = Participant(
        ParticipantConfig(federation=federation, participant_id="solo"), app, transport, seen.append
    )
    await topology.declare_participant(coordinator, "solo")
    run = asyncio.create_task(participant.run())
    try:
        model = ModelMeta(federation=federation, version=0, round=1, rounds_total=1)
        await coordinator.publish(topology.models, "", b"\x00 not a model")
        await coordinator.publish(
            topology.models, "", encode_message(model, app.initial_weights()),
            type=MESSAGE_TYPES["model"],
        )  # fmt: skip
        async with coordinator.consume(topology.updates, prefetch=1) as updates:
            delivery = await asyncio.wait_for(anext(updates), 10)
            update = decode_message(delivery.body)
            meta = update.meta(UpdateMeta)
            assert (meta.participant, meta.round, meta.base_version) == ("solo", 1, 0)
            assert meta.num_examples == 100
            for delta in update.weights().values():
                np.testing.assert_allclose(delta, 0.001)
            await delivery.ack()
        done = FederationDone(federation=federation, rounds_completed=1, model_version=1)
        await coordinator.publish(
            topology.control, FEDERATION_DONE, encode_message(done),
            type=MESSAGE_TYPES["federation.done"],
        )  # fmt: skip
        stats = await asyncio.wait_for(run, 10)
        assert (stats.rounds_trained, stats.updates_sent) == (1, 1)
        assert [(r.round, r.version) for r in seen] == [(1, 0)]
    finally:
        run.cancel()
        await topology.delete(coordinator, ["solo"])


async def test_a_participant_whose_model_stopped_arriving_part_way_asks_for_it_again(
    transport_pair, federation
):
    """Its queue was bound in the middle of the model's fanout: it holds the last chunks
    only, and the coordinator answered no join (the queue was not empty). It joins again
    once no chunk has come for ``stalled_model_seconds``, and trains on the whole model."""
    coordinator, transport = transport_pair
    topology = Topology(federation)
    await topology.declare_core(coordinator)
    app = SyntheticApp(params=4096)  # 16 KiB: 4 chunks of 4 KiB
    config = ParticipantConfig(
        federation=federation, participant_id="late", stalled_model_seconds=0.3
    )
    model = ModelMeta(federation=federation, version=0, round=1, rounds_total=1)
    chunks = list(encode_chunks(model, app.initial_weights(), chunk_bytes=4096))
    assert len(chunks) == 4
    queue = topology.model_queue("late")

    async def send(bodies: list[bytes]) -> None:
        for body in bodies:
            await coordinator.publish("", queue, body, type=MESSAGE_TYPES["model"])

    run = asyncio.create_task(Participant(config, app, transport, chunk_bytes=4096).run())
    joins = 0
    try:
        async with coordinator.consume(topology.coordinator, prefetch=10) as control:
            async with asyncio.timeout(10):  # heartbeats keep coming: one deadline for all
                while joins < 2:
                    event = await anext(control)
                    await event.ack()
                    if event.type == MESSAGE_TYPES["join"]:
                        joins += 1
                        await send(chunks[2:] if joins == 1 else chunks)
        async with coordinator.consume(topology.updates, prefetch=1) as updates:
            delivery = await asyncio.wait_for(anext(updates), 10)
            assert decode_message(delivery.body).meta(UpdateMeta).base_version == 0
            await delivery.ack()
    finally:
        run.cancel()
        await topology.delete(coordinator, ["late"])
