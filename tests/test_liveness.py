"""Liveness: a participant counts as alive for ``liveness_seconds`` after its last join or
heartbeat, and no longer. The count the dashboard and the metrics show must fall when
participants go silent (killed, cut off) even though nothing else happens then, come back
when one beats again, and fall at once on a leave. On the embedded broker: what is under
test is the coordinator's clock, not the transport."""

from __future__ import annotations

import asyncio

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.service import Coordinator
from fedq.messages.codec import encode_message
from fedq.messages.memory import MemoryBroker, MemoryTransport
from fedq.messages.schema import MESSAGE_TYPES, Heartbeat, Leave
from fedq.messages.topology import Topology, participant_key
from fedq.messages.transport import Transport
from tests.helpers import consumers_on, until_async

LIVENESS = 1.0


class AliveCounts(CoordinatorObserver):
    def __init__(self) -> None:
        self.counts: list[int] = []

    def participants_alive(self, alive: int) -> None:
        self.counts.append(alive)


async def _send(sender: Transport, topology: Topology, event: Heartbeat | Leave) -> None:
    key = participant_key(event.kind, event.participant)
    await sender.publish(
        topology.control, key, encode_message(event), type=MESSAGE_TYPES[event.kind]
    )


async def test_silent_participants_stop_counting_as_alive_and_count_again_when_they_beat(
    tmp_path, federation
):
    broker = MemoryBroker()
    topology = Topology(federation)
    seen = AliveCounts()
    config = CoordinatorConfig(
        federation=federation,
        participants=3,
        rounds=1,
        state_dir=tmp_path,
        liveness_seconds=LIVENESS,
    )

    async def last_count() -> int | None:
        return seen.counts[-1] if seen.counts else None

    async with MemoryTransport(broker) as own, MemoryTransport(broker) as sender:
        coordinator = Coordinator(config, SyntheticApp(params=100), own, [seen])
        run = asyncio.create_task(coordinator.run())
        try:
            await until_async(
                lambda: consumers_on(own, topology.coordinator),
                lambda n: n >= 1,
                what="the coordinator to consume its control queue",
            )
            for participant in ("p0", "p1"):
                await _send(
                    sender, topology, Heartbeat(federation=federation, participant=participant)
                )
            await until_async(last_count, lambda c: c == 2, what="two participants alive")
            # Nothing more is sent: only the clock can bring the count down.
            await until_async(
                last_count, lambda c: c == 0, what="both to expire", within=10 * LIVENESS
            )
            assert coordinator.membership.alive() == 0
            await _send(sender, topology, Heartbeat(federation=federation, participant="p1"))
            await until_async(last_count, lambda c: c == 1, what="p1 alive again")
            await _send(sender, topology, Leave(federation=federation, participant="p1"))
            await until_async(last_count, lambda c: c == 0, what="p1 gone on its leave")
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    # Each change was reported as it happened: up, down by the clock alone, up, down.
    changes = [c for i, c in enumerate(seen.counts) if i == 0 or c != seen.counts[i - 1]]
    assert changes[:2] == [1, 2] and changes[-3:] == [0, 1, 0], seen.counts
