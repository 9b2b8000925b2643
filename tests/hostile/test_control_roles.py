"""Control messages name who sent them three ways, and the coordinator believes none alone:
a heartbeat on pN's own routing key that claims another id in its body is ignored and
counted, and a flood of heartbeats under made-up ids costs O(1) each, is remembered only up
to N + slack ids and never counts as more than N participants alive. On the real RabbitMQ.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.membership import REMEMBERED_SLACK
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import encode_message
from fedq.messages.schema import MESSAGE_TYPES, Heartbeat
from fedq.messages.topology import Topology, participant_key
from fedq.messages.transport import Transport
from tests.broker_users import broker_users
from tests.conftest import BROKER_URL
from tests.helpers import polled, until_async

pytestmark = pytest.mark.broker

GHOSTS = 2000


async def _run(
    tmp_path: Path,
    federation: str,
    participants: int,
    attack: Callable[[Transport, Topology], Awaitable[None]],
    done: Callable[[Coordinator], bool],
    sender_url: str = BROKER_URL,
    verify_identity: bool = False,
) -> Coordinator:
    """A coordinator on the real broker under ``attack``, until ``done(coordinator)``."""
    topology = Topology(federation)
    config = CoordinatorConfig(
        federation=federation,
        participants=participants,
        rounds=1,
        state_dir=tmp_path,
        linger_seconds=0,
        verify_identity=verify_identity,
    )
    async with AmqpTransport(BROKER_URL) as own, AmqpTransport(sender_url) as sender:
        await topology.declare_core(own)
        coordinator = Coordinator(config, SyntheticApp(params=100), own)
        run = asyncio.create_task(coordinator.run())
        try:
            await attack(sender, topology)
            await until_async(
                polled(lambda: coordinator),
                done,
                what="the coordinator to have handled the attack",
            )
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await topology.delete(own, [])
    return coordinator


async def _heartbeat(sender: Transport, topology: Topology, key: str, claims: str) -> None:
    event = Heartbeat(federation=topology.federation, participant=claims)
    body = encode_message(event)
    await sender.publish(topology.control, key, body, type=MESSAGE_TYPES[event.kind])


async def test_a_heartbeat_claiming_another_id_than_its_key_is_ignored_and_counted(
    tmp_path, federation
):
    async def attack(sender: Transport, topology: Topology) -> None:
        # p0's own key (the only one its topic permission allows), p1's id in the body.
        await _heartbeat(sender, topology, participant_key("heartbeat", "p0"), "p1")
        await _heartbeat(sender, topology, participant_key("heartbeat", "p2"), "p2")

    # p2's honest heartbeat, sent after the forged one, is handled after it.
    coordinator = await _run(
        tmp_path, federation, 3, attack, lambda c: "p2" in c.membership.last_seen
    )
    assert list(coordinator.membership.last_seen) == ["p2"]
    assert coordinator.membership.ignored == {"wrong_key": 1}


async def test_heartbeats_under_made_up_ids_are_bounded_and_never_counted_beyond_n(
    tmp_path, federation
):
    async def attack(sender: Transport, topology: Topology) -> None:
        for i in range(GHOSTS):
            ghost = f"ghost-{i}"
            await _heartbeat(sender, topology, participant_key("heartbeat", ghost), ghost)

    last = f"ghost-{GHOSTS - 1}"
    coordinator = await _run(
        tmp_path, federation, 3, attack, lambda c: last in c.membership.last_seen
    )
    membership = coordinator.membership
    assert len(membership.last_seen) <= 3 + REMEMBERED_SLACK
    assert membership.alive() <= 3
    # the newest are the ones remembered: eviction from the oldest end
    assert last in membership.last_seen


async def test_with_verify_identity_a_heartbeat_from_another_broker_user_is_ignored(
    tmp_path, federation
):
    """The key and the body agree (p0), but the broker user is mallory's."""

    async def attack(sender: Transport, topology: Topology) -> None:
        await _heartbeat(sender, topology, participant_key("heartbeat", "p0"), "p0")

    with broker_users([f"mallory-{federation}"]) as [(name, password)]:
        coordinator = await _run(
            tmp_path,
            federation,
            3,
            attack,
            lambda c: bool(c.membership.ignored),
            sender_url=BROKER_URL.replace("guest:guest@", f"{name}:{password}@"),
            verify_identity=True,
        )
    assert coordinator.membership.ignored == {"forged": 1}
    assert not coordinator.membership.last_seen
