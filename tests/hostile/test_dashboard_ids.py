"""The dashboard shows what the control exchange says only when the routing key names the
same sender as the body (a participant's key is the one its topic permission allows), and
at most MAX_SHOWN_PARTICIPANTS ids per federation however many are made up. Its listener
runs on the real RabbitMQ."""

from __future__ import annotations

import asyncio

import pytest

from fedq.coordinator.roster import Roster
from fedq.dashboard.live import MAX_SHOWN_PARTICIPANTS, ControlListener, LiveState
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import encode_message
from fedq.messages.schema import MESSAGE_TYPES, ControlMessage, FederationDone, Heartbeat
from fedq.messages.topology import Topology, participant_key
from tests.conftest import BROKER_URL
from tests.helpers import polled, until_async

pytestmark = pytest.mark.broker

GHOSTS = MAX_SHOWN_PARTICIPANTS + 200


async def test_the_dashboard_believes_no_body_against_its_key_and_shows_a_bounded_list(
    federation,
):
    topology = Topology(federation)
    live = LiveState()

    def on_message(message: ControlMessage) -> None:
        live.apply(message, asyncio.get_running_loop().time())

    listener = ControlListener(BROKER_URL, lambda: {federation}, on_message, lambda: None)
    async with AmqpTransport(BROKER_URL) as sender:
        await topology.declare_core(sender)
        task = asyncio.create_task(listener.run())
        try:
            await until_async(  # the listener's queue is bound
                polled(lambda: listener.status.ok), what="the listener bound"
            )

            async def send(key: str, message: Heartbeat | FederationDone) -> None:
                body = encode_message(message)
                await sender.publish(topology.control, key, body, type=MESSAGE_TYPES[message.kind])

            # p0's key, p1 in the body; and federation.done under a participant's key
            await send(
                participant_key("heartbeat", "p0"),
                Heartbeat(federation=federation, participant="p1"),
            )
            done = FederationDone(federation=federation, rounds_completed=9, model_version=9)
            await send(participant_key("heartbeat", "p0"), done)
            for i in range(GHOSTS):
                ghost = f"ghost-{i}"
                await send(
                    participant_key("heartbeat", ghost),
                    Heartbeat(federation=federation, participant=ghost),
                )
            last = f"ghost-{GHOSTS - 1}"

            async def showing() -> bool:  # messages come in order: the last one was taken
                shown = live.federations.get(federation)
                return shown is not None and last in shown.participants

            await until_async(showing, what=f"{last} shown")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await topology.delete(sender, [])
    shown = live.federations[federation]
    assert "p1" not in shown.participants and shown.done is None
    assert len(shown.participants) == MAX_SHOWN_PARTICIPANTS
    assert f"ghost-{GHOSTS - 1}" in shown.participants and "ghost-0" not in shown.participants


def test_with_a_roster_the_dashboard_shows_only_the_participants_it_names():
    live = LiveState(Roster({"p0": None, "p1": 5}))
    for participant in ("p0", "ghost", "p1", "p2"):
        live.apply(Heartbeat(federation="f", participant=participant), 1.0)
    assert list(live.federations["f"].participants) == ["p0", "p1"]
