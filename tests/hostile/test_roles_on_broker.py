"""Roles on the real RabbitMQ, in a vhost with the permissions `fedq deploy users` renders:
a participant cannot delete (nor declare) the federation's exchanges, which only the
coordinator declares and owns, and a participant started before its coordinator waits for
them and then takes part with no more than its own rights (configure on its own queue
only). Both sides verify who sent what (--verify-identity, --verify-coordinator)."""

from __future__ import annotations

import asyncio

import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.topology import Topology
from fedq.messages.transport import TransportError
from fedq.participant.config import ParticipantConfig
from fedq.participant.worker import Participant
from tests.broker_users import federation_vhost
from tests.conftest import BROKER_URL
from tests.helpers import consumers_on, until_async

pytestmark = pytest.mark.broker


async def test_a_participant_cannot_delete_or_declare_the_exchanges_and_needs_not(
    tmp_path, federation
):
    pid = f"p-{federation}"
    topology = Topology(federation)
    app = SyntheticApp(params=10)
    with federation_vhost(BROKER_URL, federation, [pid]) as urls:
        async with AmqpTransport(urls["coordinator"]) as own, AmqpTransport(urls[pid]) as mine:
            participant = Participant(
                ParticipantConfig(
                    federation=federation,
                    participant_id=pid,
                    verify_coordinator=True,
                    coordinator_user=f"coordinator-{federation}",
                ),
                app,
                mine,
            )
            early = asyncio.create_task(participant.run())  # before any exchange exists
            await until_async(  # it declared its queue (and failed to bind it)
                lambda: consumers_on(own, topology.model_queue(pid)),
                lambda consumers: consumers >= 0,
                what=f"{pid}'s queue declared",
            )
            coordinator = Coordinator(
                CoordinatorConfig(
                    federation=federation,
                    participants=1,
                    rounds=2,
                    state_dir=tmp_path,
                    verify_identity=True,
                    linger_seconds=0,
                ),
                app,
                own,
            )
            await topology.declare_core(own)
            for exchange in (topology.models, topology.control, topology.updates):
                with pytest.raises(TransportError, match="ACCESS_REFUSED"):
                    await mine.delete_exchange(exchange)
                with pytest.raises(TransportError, match="ACCESS_REFUSED"):
                    await mine.declare_exchange(exchange, "fanout")
            result, stats = await asyncio.wait_for(asyncio.gather(coordinator.run(), early), 60)
    assert result.updates_incorporated == 2
    assert stats.rounds_trained == 2 and stats.forged_ignored == 0
