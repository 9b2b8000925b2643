"""A participant on its own: what it does with what arrives in its queue."""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.messages.amqp import AmqpTransport
from fedq.messages.chunks import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, encode_chunks
from fedq.messages.codec import decode_message, encode_message
from fedq.messages.schema import (
    MAX_INT,
    MESSAGE_TYPES,
    FederationDone,
    Heartbeat,
    ModelMeta,
    UpdateMeta,
)
from fedq.messages.topology import FEDERATION_DONE, Topology
from fedq.messages.transport import Transport, TransportError
from fedq.participant import worker
from fedq.participant.config import ParticipantConfig
from fedq.participant.model_assembly import model_queue_bytes
from fedq.participant.worker import LocalUpdate, Participant
from tests.conftest import BROKER_URL

pytestmark = pytest.mark.broker

MANY_TENSORS = {
    **{f"block_{i}/{'conv' * 15}/kernel": np.ones((3, 3, 4, 5), np.float32) for i in range(60)},
    **{f"block_{i}/bias": np.ones(5, np.float64) for i in range(60)},
    "head/kernel": np.ones((300, 70), np.float32),
    "head/steps": np.ones(9000, np.int64),
}


@pytest.mark.parametrize(
    "model",
    [{"w": np.ones(100_000, np.float32)}, {"w": np.ones(16_385, np.float32)}, MANY_TENSORS],
    ids=["one tensor", "just above the smallest chunk", "many tensors"],
)
def test_a_model_queue_holds_one_model_however_it_is_cut_and_not_two(model):
    """The participant declares its queue before it knows the chunk size: the bound holds
    every body of one model at any size a coordinator may announce, and not two models."""
    bound = model_queue_bytes(model)
    assert bound is not None
    longest = ModelMeta(
        federation="f" * 64,
        version=MAX_INT,  # the longest msgpack integer (9 bytes), as 2**63 - 1
        round=MAX_INT,
        rounds_total=MAX_INT,
        chunk_bytes=MAX_CHUNK_BYTES,
    )
    for chunk_bytes in (MIN_CHUNK_BYTES, MIN_CHUNK_BYTES + 1234, 100_000, 1 << 20, MAX_CHUNK_BYTES):
        for codec in ("raw", "fp16"):
            bodies = encode_chunks(longest, model, codec, chunk_bytes)
            assert sum(len(body) for body in bodies) <= bound, (chunk_bytes, codec)
    shortest = ModelMeta(federation="f", version=0, rounds_total=1)
    assert 2 * len(encode_message(shortest, model)) > bound


def test_a_model_that_fits_the_smallest_chunk_keeps_only_the_newest_message():
    assert model_queue_bytes({"w": np.ones(MIN_CHUNK_BYTES // 4, np.float32)}) is None


async def announce_done(coordinator: Transport, topology: Topology, versions: int) -> None:
    """``federation.done`` after ``versions`` versions, as the coordinator sends it."""
    done = FederationDone(
        federation=topology.federation, rounds_completed=versions, model_version=versions
    )
    await coordinator.publish(
        topology.control, FEDERATION_DONE, encode_message(done),
        type=MESSAGE_TYPES["federation.done"],
    )  # fmt: skip


async def test_changes_of_state_less_than_a_second_apart_share_one_heartbeat(
    transport_pair, federation
):
    """Short rounds: a heartbeat at every start and end of training was two more confirmed
    publishes a round for the participant and two more deliveries for the coordinator.
    Now a change of state goes out at once only if the last heartbeat is a second old or
    more; the first one (training on v0) goes out at once."""
    coordinator, transport = transport_pair
    topology = Topology(federation)
    await topology.declare_core(coordinator)
    app, rounds = SyntheticApp(params=8), 20
    participant = Participant(
        ParticipantConfig(federation=federation, participant_id="quick"), app, transport
    )
    await topology.declare_participant(coordinator, "quick")
    beats: list[Heartbeat] = []
    run = asyncio.create_task(participant.run())
    try:
        started = time.monotonic()
        async with coordinator.consume(topology.updates, prefetch=1) as updates:
            for version in range(rounds):
                model = ModelMeta(
                    federation=federation, version=version, round=version + 1, rounds_total=rounds
                )
                await coordinator.publish(
                    topology.models, "", encode_message(model, app.initial_weights()),
                    type=MESSAGE_TYPES["model"],
                )  # fmt: skip
                delivery = await asyncio.wait_for(anext(updates), 10)
                await delivery.ack()
        await announce_done(coordinator, topology, versions=rounds)
        await asyncio.wait_for(run, 10)
        elapsed = time.monotonic() - started
        async with coordinator.consume(topology.coordinator, prefetch=10) as events:
            while (event := await asyncio.wait_for(anext(events), 10)).type != MESSAGE_TYPES[
                "leave"
            ]:
                if event.type == MESSAGE_TYPES["heartbeat"]:
                    beats.append(decode_message(event.body).meta(Heartbeat))
                await event.ack()
            await event.ack()
    finally:
        run.cancel()
        await topology.delete(coordinator, ["quick"])
    assert (beats[0].state, beats[0].version) == ("training", -1), beats[0]
    # One a second for the changes of state, one every 5 s at most besides: not 2 a round.
    assert len(beats) <= 2 + elapsed + elapsed / 5 < 2 * rounds, (len(beats), elapsed)


async def test_a_participant_trains_on_each_new_model_skips_garbage_and_stops_when_done(
    transport_pair, federation
):
    coordinator, transport = transport_pair
    topology = Topology(federation)
    await topology.declare_core(coordinator)
    app = SyntheticApp(params=8)
    seen: list[LocalUpdate] = []
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
        await announce_done(coordinator, topology, versions=1)
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
    app = SyntheticApp(params=1 << 16)  # 256 KiB: 4 chunks of 64 KiB
    config = ParticipantConfig(
        federation=federation, participant_id="late", stalled_model_seconds=0.3
    )
    model = ModelMeta(
        federation=federation, version=0, round=1, rounds_total=1, chunk_bytes=1 << 16
    )
    chunks = list(encode_chunks(model, app.initial_weights(), chunk_bytes=model.chunk_bytes))
    assert len(chunks) == 4
    queue = topology.model_queue("late")

    async def send(bodies: list[bytes]) -> None:
        for body in bodies:
            await coordinator.publish("", queue, body, type=MESSAGE_TYPES["model"])

    run = asyncio.create_task(Participant(config, app, transport).run())
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


async def test_a_model_that_never_completes_is_asked_for_at_doubling_intervals(
    transport_pair, federation
):
    """Every join is answered with the same last two chunks, so the model never completes:
    the participant asks again after ``stalled_model_seconds``, then twice as long each
    time. Waits end no earlier than asked, so each gap is at least its share of the
    schedule; with a fixed interval the fourth gap would be an eighth of its bound."""
    coordinator, transport = transport_pair
    topology = Topology(federation)
    await topology.declare_core(coordinator)
    app = SyntheticApp(params=1 << 16)
    base = 0.1
    config = ParticipantConfig(
        federation=federation, participant_id="stuck", stalled_model_seconds=base
    )
    model = ModelMeta(
        federation=federation, version=0, round=1, rounds_total=1, chunk_bytes=1 << 16
    )
    tail = list(encode_chunks(model, app.initial_weights(), chunk_bytes=model.chunk_bytes))[2:]
    queue = topology.model_queue("stuck")
    run = asyncio.create_task(Participant(config, app, transport).run())
    joined: list[float] = []
    try:
        async with coordinator.consume(topology.coordinator, prefetch=10) as control:
            async with asyncio.timeout(30):
                while len(joined) < 5:
                    event = await anext(control)
                    await event.ack()
                    if event.type == MESSAGE_TYPES["join"]:
                        joined.append(time.monotonic())
                        for body in tail:
                            await coordinator.publish("", queue, body, type=MESSAGE_TYPES["model"])
    finally:
        run.cancel()
        await topology.delete(coordinator, ["stuck"])
    gaps = [later - earlier for earlier, later in itertools.pairwise(joined)]
    assert all(gap >= base * 2**k for k, gap in enumerate(gaps)), gaps


def test_the_rejoin_wait_doubles_up_to_its_bound():
    base = 0.5
    waits = [base]
    for _ in range(8):
        waits.append(worker.next_rejoin_wait(waits[-1], base))
    bound = worker.MAX_REJOIN_FACTOR * base
    assert waits == [min(base * 2**k, bound) for k in range(9)]
    assert waits[-1] == bound


async def test_a_participant_skips_a_model_that_something_newer_waits_behind(
    transport_pair, federation
):
    """A model above the smallest chunk comes through a queue bounded by bytes, which can
    keep two models sent in fp16: the participant trains on the newest only."""
    coordinator, transport = transport_pair
    topology = Topology(federation)
    await topology.declare_core(coordinator)
    app = SyntheticApp(params=1 << 15)  # 128 KiB raw, one message at the default chunk size
    bound = model_queue_bytes(app.initial_weights())
    assert bound is not None
    await topology.declare_participant(coordinator, "solo", max_bytes=bound)
    queue = topology.model_queue("solo")
    for version in (0, 1):
        model = ModelMeta(federation=federation, version=version, round=version + 1, rounds_total=2)
        body = encode_message(model, app.initial_weights(), "fp16")
        await coordinator.publish("", queue, body, type=MESSAGE_TYPES["model"])
    assert await coordinator.queue_depth(queue) == 2
    seen: list[LocalUpdate] = []
    config = ParticipantConfig(federation=federation, participant_id="solo")
    run = asyncio.create_task(Participant(config, app, transport, seen.append).run())
    try:
        async with coordinator.consume(topology.updates, prefetch=1) as updates:
            delivery = await asyncio.wait_for(anext(updates), 10)
            assert decode_message(delivery.body).meta(UpdateMeta).base_version == 1
            await delivery.ack()
        await announce_done(coordinator, topology, versions=2)
        stats = await asyncio.wait_for(run, 10)
        assert [r.version for r in seen] == [1]
        assert (stats.models_superseded, stats.updates_sent) == (1, 1)
    finally:
        run.cancel()
        await topology.delete(coordinator, ["solo"])


async def test_without_a_coordinator_a_participant_says_so_and_a_stop_leaves_nothing(
    federation, monkeypatch, caplog
):
    """The exchanges exist (a coordinator ran once), none runs now: the participant says
    that no model came, now and then, instead of waiting in silence; stopped (a cancelled
    run: Ctrl-C, SIGTERM), it says leave and takes its queue off the broker."""
    monkeypatch.setattr(worker, "NO_MODEL_NOTICE_SECONDS", 0.2)
    topology = Topology(federation)
    config = ParticipantConfig(federation=federation, participant_id="p0")
    async with AmqpTransport(BROKER_URL) as transport:
        await topology.declare_core(transport)
        try:
            run = asyncio.create_task(Participant(config, SyntheticApp(params=6), transport).run())
            async with transport.consume(topology.coordinator, prefetch=10) as events:
                join = await asyncio.wait_for(anext(events), 10)
                assert join.routing_key == "join.p0"
                await join.ack()
                deadline = time.monotonic() + 10
                while "no model from the coordinator" not in caplog.text:
                    assert not run.done() and time.monotonic() < deadline, caplog.text
                    await asyncio.sleep(0.05)
                run.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await run
                kinds = []
                while "leave.p0" not in kinds:
                    event = await asyncio.wait_for(anext(events), 10)
                    await event.ack()
                    kinds.append(event.routing_key)
            with pytest.raises(TransportError, match="NOT_FOUND"):
                await transport.queue_depth(topology.model_queue("p0"))
        finally:
            await topology.delete(transport, ["p0"])
