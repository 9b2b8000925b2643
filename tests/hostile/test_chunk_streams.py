"""What one sender can do to the assembly of chunked updates: chunks cut its own way
(tiny, or more of them than the model's chunk size makes), more updates held open than
its share of the stream slots, and a stream kept alive by re-sending one chunk. Each is
refused with its reason, in the DLQ byte for byte, and the honest federation completes
with the exact FedAvg model."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.assembly import ChunkBounds
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.chunks import encode_chunks, plan_chunks
from fedq.messages.codec import spec_of
from fedq.messages.schema import MESSAGE_TYPES, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology
from fedq.messages.transport import Transport
from tests.conftest import BROKER_URL
from tests.helpers import drain
from tests.test_chunked_updates import (
    CHUNK,
    PARAMS,
    assert_model_is_fedavg,
    chunks,
    dead_letters_by_reason,
)

pytestmark = pytest.mark.broker


def attacker_chunks(federation: str, chunk_bytes: int = CHUNK) -> list[bytes]:
    """A well-formed update of "mallory", cut at ``chunk_bytes``."""
    meta = UpdateMeta(
        federation=federation, participant="mallory", round=1, base_version=0,
        num_examples=10, update_id=str(uuid.uuid4()),
    )  # fmt: skip
    model = SyntheticApp(params=PARAMS).initial_weights()
    return list(
        encode_chunks(meta, {k: np.zeros_like(v) for k, v in model.items()}, "raw", chunk_bytes)
    )


async def send(sender: Transport, topology: Topology, bodies: list[bytes]) -> None:
    for body in bodies:
        await sender.publish(
            topology.updates, UPDATE_KEY, body, type=MESSAGE_TYPES["update"], mandatory=True
        )


def config(federation: str, state_dir: Path, **extra: float) -> CoordinatorConfig:
    return CoordinatorConfig(
        federation=federation, participants=2, rounds=1, state_dir=state_dir,
        round_timeout=600, linger_seconds=0, chunk_bytes=CHUNK, **extra,
    )  # fmt: skip


async def test_chunks_off_the_models_plan_and_streams_beyond_a_senders_share_are_refused(
    tmp_path: Path, federation: str
):
    topology = Topology(federation)
    tiny = attacker_chunks(federation, chunk_bytes=CHUNK // 16)  # 16x as many chunks
    held_open = [attacker_chunks(federation)[0] for _ in range(3)]  # first chunk of three
    async with AmqpTransport(BROKER_URL) as own, AmqpTransport(BROKER_URL) as sender:
        await topology.declare_core(sender)
        try:
            await send(sender, topology, tiny + held_open)
            for index in range(2):
                await send(sender, topology, chunks(federation, index, str(uuid.uuid4())))
            coordinator = Coordinator(
                config(federation, tmp_path, chunk_timeout=600), SyntheticApp(params=PARAMS), own
            )
            result = await asyncio.wait_for(coordinator.run(), 60)
            assert result.rejected_by_reason == {
                "chunk_plan": len(tiny),
                "too_many_streams": 1,
                "stale": 2,  # mallory's two open streams, at the end
            }
            dead = dead_letters_by_reason(await drain(BROKER_URL, topology.rejected))
            assert dead["chunk_plan"] == Counter(tiny)
            assert dead["too_many_streams"] == Counter(held_open[2:])
            assert dead["stale"] == Counter(held_open[:2])
            assert_model_is_fedavg(tmp_path, [[0, 1]])
        finally:
            await topology.delete(sender, [])


async def test_re_sending_a_chunk_does_not_keep_its_stream_open(tmp_path: Path, federation: str):
    """The stream's clock is its last new chunk: copies of one chunk, however often, do not
    hold a slot past ``chunk_timeout``."""
    topology = Topology(federation)
    first = attacker_chunks(federation)[0]
    async with AmqpTransport(BROKER_URL) as own, AmqpTransport(BROKER_URL) as sender:
        await topology.declare_core(sender)
        coordinator = Coordinator(
            config(federation, tmp_path, chunk_timeout=1.0), SyntheticApp(params=PARAMS), own
        )
        running = asyncio.create_task(coordinator.run())
        try:
            async with sender.consume(topology.rejected, prefetch=1) as dead:
                refused = asyncio.ensure_future(anext(dead))
                async with asyncio.timeout(20):  # the attacker's pace: a copy every 0.2 s
                    while not refused.done():
                        await send(sender, topology, [first])
                        await asyncio.wait({refused}, timeout=0.2)
                delivery = refused.result()
                await delivery.ack()
            assert bytes(delivery.body) == first
            assert str(delivery.headers["x-fedq-reason"]).startswith("incomplete: ")
            for index in range(2):
                await send(sender, topology, chunks(federation, index, str(uuid.uuid4())))
            await asyncio.wait_for(running, 60)
            assert_model_is_fedavg(tmp_path, [[0, 1]])
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await topology.delete(sender, [])


def test_an_honest_update_fits_the_chunk_bounds_in_any_order_of_its_tensors():
    """A participant's tensors may be in another order than the coordinator's (a model it
    assembled from chunks that came out of order): its cut differs, and must still pass."""
    model: dict[str, np.ndarray] = {
        "a": np.zeros(30_000, np.float32),
        "b": np.zeros(5_000, np.float64),
        "c": np.zeros(70_000, np.float32),
        "d": np.zeros(3, np.float32),
    }
    bounds = ChunkBounds.of(spec_of(model), CHUNK)
    for order in (list(model), list(reversed(model)), ["c", "a", "d", "b"]):
        plan = plan_chunks({name: model[name] for name in order}, CHUNK)
        assert 1 < len(plan) <= bounds.most_chunks
        for index, chunk in enumerate(plan):
            raw = sum((s.stop - s.start) * model[s.name].itemsize for s in chunk)
            least = 1 if index == len(plan) - 1 else bounds.least
            assert least <= raw <= bounds.most_bytes, (order, index, raw)
