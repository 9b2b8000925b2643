"""A refused update's dead-letter copy carries fedq's reason and a bounded allow-list of
the sender's headers, rebuilt, never copied: a sender's headers are its own choice (a value
near the broker's frame size, tables nested deep), and copied whole beside the reason they
could make the copy itself unpublishable."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.evidence import KEPT_HEADERS, MAX_REASON_CHARS, REASON_HEADER
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import encode_message
from fedq.messages.schema import MESSAGE_TYPES, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology
from tests.conftest import BROKER_URL

pytestmark = pytest.mark.broker

GARBAGE = b"\xc1 not msgpack"
#: What the sender sets: two headers fedq's participants use, and what they never do.
SENT_HEADERS = {
    "participant": "p0",
    "round": 1,
    "base_version": "x" * 10_000,  # a kept name, but no header fedq would set
    "junk": "x" * 100_000,
    "nested": {"a": {"b": {"c": [1, 2, 3]}}},
}


async def test_a_dead_letter_copy_keeps_the_reason_and_only_short_allowed_headers(
    tmp_path, federation
):
    app = SyntheticApp(params=6)
    topology = Topology(federation)
    config = CoordinatorConfig(
        federation=federation, participants=1, rounds=1, state_dir=tmp_path, linger_seconds=0
    )
    honest = UpdateMeta(
        federation=federation, participant="p0", round=1, base_version=0, num_examples=3
    )
    delta = {k: np.full_like(v, 0.5) for k, v in app.initial_weights().items()}
    async with AmqpTransport(BROKER_URL) as own, AmqpTransport(BROKER_URL) as sender:
        await topology.declare_core(sender)
        try:
            await sender.publish(
                topology.updates, UPDATE_KEY, GARBAGE, message_id="bad",
                type=MESSAGE_TYPES["update"], headers=SENT_HEADERS, mandatory=True,
            )  # fmt: skip
            await sender.publish(
                topology.updates, UPDATE_KEY, encode_message(honest, delta),
                message_id=honest.update_id, type=MESSAGE_TYPES["update"], mandatory=True,
            )  # fmt: skip
            result = await asyncio.wait_for(Coordinator(config, app, own).run(), 30)
            assert (result.updates_incorporated, result.rejected_by_reason) == (
                1,
                {"undecodable": 1},
            )
            async with sender.consume(topology.rejected, prefetch=1) as dead:
                copy = await asyncio.wait_for(anext(dead), 10)
                await copy.ack()
            assert bytes(copy.body) == GARBAGE
            headers = dict(copy.headers)
            reason = headers.pop(REASON_HEADER)
            assert headers == {"participant": "p0", "round": 1}
            assert set(headers) <= KEPT_HEADERS
            assert str(reason).startswith("undecodable: ") and len(reason) <= MAX_REASON_CHARS
            assert await sender.queue_depth(topology.rejected) == 0
        finally:
            await topology.delete(sender, [])
