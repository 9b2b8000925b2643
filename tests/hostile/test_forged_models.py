"""With ``--verify-coordinator`` a participant takes models and ``federation.done`` only from
the coordinator's broker user: another participant holding write on the models and control
exchanges (its own credentials, a broker user of its own on the real RabbitMQ) can neither
end the federation for it nor make it train on a model of its choosing. The forged message
is acked and ignored, and the honest federation completes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import encode_message
from fedq.messages.schema import MESSAGE_TYPES, FederationDone, ModelMeta
from fedq.messages.topology import FEDERATION_DONE, Topology
from fedq.messages.transport import Transport
from fedq.participant.config import ParticipantConfig
from fedq.participant.worker import Participant
from tests.broker_users import broker_users
from tests.conftest import BROKER_URL
from tests.helpers import until_async

pytestmark = pytest.mark.broker

ROUNDS = 2


async def _forge(kind: str, mallory: Transport, topology: Topology, app: SyntheticApp) -> None:
    """What another participant may publish: federation.done on the control exchange, or a
    model (of a version far ahead, all weights 1e6) on the models fanout."""
    if kind == "federation.done":
        done = FederationDone(federation=topology.federation, rounds_completed=0, model_version=0)
        await mallory.publish(
            topology.control, FEDERATION_DONE, encode_message(done), type=MESSAGE_TYPES[kind]
        )
        return
    meta = ModelMeta(federation=topology.federation, version=7, round=8, rounds_total=ROUNDS)
    poison = {k: np.full_like(v, 1e6) for k, v in app.initial_weights().items()}
    await mallory.publish(
        topology.models, "", encode_message(meta, poison), type=MESSAGE_TYPES["model"]
    )


@pytest.mark.parametrize("kind", ["federation.done", "model"])
async def test_a_model_or_federation_done_from_another_user_is_ignored(tmp_path, federation, kind):
    app = SyntheticApp(params=10)
    topology = Topology(federation)
    config = CoordinatorConfig(
        federation=federation, participants=1, rounds=ROUNDS, state_dir=tmp_path
    )
    with broker_users([f"mallory-{federation}"]) as [(name, password)]:
        mallory_url = BROKER_URL.replace("guest:guest@", f"{name}:{password}@")
        async with (
            AmqpTransport(BROKER_URL) as own,
            AmqpTransport(BROKER_URL) as honest,
            AmqpTransport(mallory_url) as mallory,
        ):
            await topology.declare_core(own)
            # The participant's queue exists and holds the forged message before anything
            # of the coordinator's: without the check, it is what the participant takes.
            await topology.declare_participant(honest, "p0")
            await _forge(kind, mallory, topology, app)
            participant = Participant(
                ParticipantConfig(
                    federation=federation,
                    participant_id="p0",
                    verify_coordinator=True,
                    coordinator_user="guest",
                ),
                app,
                honest,
            )
            running = asyncio.create_task(participant.run())
            try:
                await until_async(  # the participant has taken the forged message
                    lambda: honest.queue_depth(topology.model_queue("p0")),
                    lambda depth: depth == 0,
                    what="the forged model taken by p0",
                )
                result, stats = await asyncio.wait_for(
                    asyncio.gather(Coordinator(config, app, own).run(), running), 30
                )
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
                await topology.delete(own, ["p0"])
    assert stats.forged_ignored == 1
    assert stats.rounds_trained == ROUNDS
    assert result.updates_incorporated == ROUNDS
    assert [h["participants"] for h in result.history] == [["p0"]] * ROUNDS
