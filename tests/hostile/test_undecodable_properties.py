"""Messages whose properties the AMQP client cannot decode are settled like any other.

Published on a participant's own permitted keys (the updates exchange, its heartbeat key),
each of these made aiormq's frame reader fail and take the coordinator's only connection
down; the broker then redelivered the message after every reconnect, forever. Now each is
refused (an update, its body to the dead-letter queue with reason
``undecodable_properties``) or ignored and acked (a control message), and the federation
goes on with the exact model.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pamqp.frame
import pytest
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.evidence import REASON_HEADER
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import encode_message
from fedq.messages.frames import UNDECODABLE_HEADER, tolerant_unmarshal
from fedq.messages.schema import MESSAGE_TYPES, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology, participant_key
from fedq.messages.transport import Delivery, Transport
from tests.conftest import BROKER_URL
from tests.hostile.raw_frames import publish_tampered, tamperings

pytestmark = pytest.mark.broker

REASON = "undecodable_properties"


async def test_undecodable_properties_are_refused_and_the_federation_goes_on(tmp_path, federation):
    app = SyntheticApp(params=6)
    topology = Topology(federation)
    config = CoordinatorConfig(
        federation=federation, participants=1, rounds=1, state_dir=tmp_path, linger_seconds=0
    )
    honest = UpdateMeta(
        federation=federation, participant="p0", round=1, base_version=0, num_examples=3
    )
    initial = app.initial_weights()
    delta = {k: np.full_like(v, 0.5) for k, v in initial.items()}
    kinds = tamperings("guest")
    bodies = {f"tampered {i}".encode(): kind.name for i, kind in enumerate(kinds)}
    async with AmqpTransport(BROKER_URL) as own, AmqpTransport(BROKER_URL) as sender:
        await topology.declare_core(sender)
        try:
            for body, kind in zip(bodies, kinds, strict=True):
                await publish_tampered(BROKER_URL, topology.updates, UPDATE_KEY, body, kind)
                await publish_tampered(
                    BROKER_URL, topology.control, participant_key("heartbeat", "p0"), body, kind
                )
            await sender.publish(
                topology.updates, UPDATE_KEY, encode_message(honest, delta),
                message_id=honest.update_id, type=MESSAGE_TYPES["update"], mandatory=True,
            )  # fmt: skip
            coordinator = Coordinator(config, app, own)
            result = await asyncio.wait_for(coordinator.run(), 60)

            assert result.updates_incorporated == 1
            assert result.rejected_by_reason == {REASON: len(kinds)}
            assert coordinator.membership.ignored[REASON] == len(kinds)
            committed = load_checkpoint(checkpoint_path(tmp_path / "models", 1))
            for name, before in initial.items():
                np.testing.assert_array_equal(committed[name], before + 0.5)
            dead = await _drain(sender, topology.rejected, len(kinds))
            assert {bytes(d.body): d.headers[REASON_HEADER] for d in dead}.keys() == bodies.keys()
            for copy in dead:
                assert str(copy.headers[REASON_HEADER]).startswith(f"{REASON}: properties: ")
            assert await sender.queue_depth(topology.updates) == 0
        finally:
            await topology.delete(sender, [])


async def _drain(transport: Transport, queue: str, count: int) -> list[Delivery]:
    """Exactly ``count`` messages of ``queue``, acked; fails when fewer come within 10 s."""
    taken: list[Delivery] = []
    async with transport.consume(queue, prefetch=count) as deliveries:
        for _ in range(count):
            delivery = await asyncio.wait_for(anext(deliveries), 10)
            await delivery.ack()
            taken.append(delivery)
    return taken


def _header_frame(properties: Basic.Properties, swaps: dict[bytes, bytes]) -> bytes:
    frame = pamqp.frame.marshal(ContentHeader(0, 12, properties), 3)
    for placeholder, raw in swaps.items():
        frame = frame.replace(placeholder, raw)
    return frame


def test_a_header_that_decodes_is_left_as_it_is():
    properties = Basic.Properties(message_id="m", headers={"a": 1}, delivery_mode=2)
    frame = _header_frame(properties, {})
    header = tolerant_unmarshal(frame)[2]
    assert isinstance(header, ContentHeader) and header.properties == properties


def test_a_header_aio_pika_cannot_make_a_message_of_is_marked():
    """pamqp decodes delivery mode 7; aio-pika's consumer would raise on it and leave the
    delivery unacked (RabbitMQ refuses it today, the client must not depend on that)."""
    frame = _header_frame(Basic.Properties(content_type="DMX", delivery_mode=2), {
        b"\x03DMX\x02": b"\x03DMX\x07"
    })  # fmt: skip
    consumed, channel, header = tolerant_unmarshal(frame)
    assert isinstance(header, ContentHeader)
    assert (consumed, channel, header.body_size) == (len(frame), 3, 12)
    assert "DeliveryMode" in str((header.properties.headers or {})[UNDECODABLE_HEADER])


def test_a_broken_method_frame_still_fails():
    frame = pamqp.frame.marshal(Basic.Ack(delivery_tag=1), 1)
    with pytest.raises(PAMQPException):
        tolerant_unmarshal(frame[:-1] + b"\x00")  # the frame-end byte wrong
