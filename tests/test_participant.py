"""A participant on its own: what it does with what arrives in its queue."""

from __future__ import annotations

import asyncio

import numpy as np

from fedq.apps.synthetic import SyntheticApp
from fedq.messages.codec import decode_message, encode_message
from fedq.messages.schema import MESSAGE_TYPES, FederationDone, ModelMeta, UpdateMeta
from fedq.messages.topology import FEDERATION_DONE, Topology
from fedq.participant.worker import Participant, ParticipantConfig, TrainedRound


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
