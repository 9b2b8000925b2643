"""An update whose broker user is not the participant it claims to be is forged."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import encode_message
from fedq.messages.memory import MemoryBroker, MemoryTransport
from fedq.messages.schema import MESSAGE_TYPES, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology
from fedq.messages.transport import Transport
from fedq.participant.config import ParticipantConfig
from fedq.participant.worker import Participant
from tests.conftest import BROKER_URL

pytestmark = [pytest.mark.broker, pytest.mark.processes]


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)


@pytest.fixture
def broker_user() -> Iterator[tuple[str, str]]:
    """A RabbitMQ user of its own, as a deployment gives each participant."""
    name, password = f"p{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rabbitmqctl("add_user", name, password)
    rabbitmqctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
    try:
        yield name, password
    finally:
        rabbitmqctl("delete_user", name)


def connections(kind: str, user: tuple[str, str]) -> tuple[Transport, Transport, Transport]:
    """(coordinator, impostor, participant): the participant authenticates as ``user``."""
    name, password = user
    if kind == "memory":
        broker = MemoryBroker()
        return (
            MemoryTransport(broker, "coordinator"),
            MemoryTransport(broker, "mallory"),
            MemoryTransport(broker, name),
        )
    own = BROKER_URL.replace("guest:guest@", f"{name}:{password}@")
    return AmqpTransport(BROKER_URL), AmqpTransport(BROKER_URL), AmqpTransport(own)


@pytest.mark.parametrize("kind", ["memory", "amqp"])
async def test_a_forged_update_is_rejected_and_the_real_participant_is_not(
    tmp_path, federation, broker_user, kind
):
    participant_id = broker_user[0]
    coordinator_t, impostor_t, participant_t = connections(kind, broker_user)
    app = SyntheticApp(params=10)
    config = CoordinatorConfig(
        federation=federation, participants=1, rounds=1, state_dir=tmp_path, verify_identity=True
    )
    topology = Topology(federation)
    async with coordinator_t, impostor_t, participant_t:
        await topology.declare_core(impostor_t)
        forged = UpdateMeta(
            federation=federation, participant=participant_id, round=1, base_version=0,
            num_examples=1_000_000,
        )  # fmt: skip
        poison = {k: np.full_like(v, 5.0) for k, v in app.initial_weights().items()}
        await impostor_t.publish(
            topology.updates, UPDATE_KEY, encode_message(forged, poison),
            message_id=forged.update_id, type=MESSAGE_TYPES["update"], mandatory=True,
        )  # fmt: skip
        participant = Participant(
            ParticipantConfig(federation=federation, participant_id=participant_id),
            app,
            participant_t,
        )
        try:
            result, _ = await asyncio.wait_for(
                asyncio.gather(Coordinator(config, app, coordinator_t).run(), participant.run()),
                30,
            )
        finally:
            await topology.delete(coordinator_t, [participant_id])
    assert result.rejected_by_reason == {"forged": 1}
    assert result.updates_incorporated == 1
    assert [h["participants"] for h in result.history] == [[participant_id]]
