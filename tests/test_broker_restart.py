"""The broker restarts mid-federation: nothing is lost and nothing is counted twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.observers import CoordinatorObserver, UpdateSeen
from fedq.coordinator.records import VersionSummary
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import encode_message
from fedq.messages.schema import UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology
from fedq.participant.config import ParticipantConfig
from fedq.scenario import ParticipantProfile
from fedq.simulation import SimulationPlan, simulate
from tests.conftest import BROKER_URL


async def rabbitmqctl(*args: str) -> None:
    process = await asyncio.create_subprocess_exec("rabbitmqctl", "-q", *args)
    assert await process.wait() == 0, f"rabbitmqctl {' '.join(args)} failed"


async def restart_broker() -> None:
    await rabbitmqctl("stop_app")
    await asyncio.sleep(1.0)
    await rabbitmqctl("start_app")
    await rabbitmqctl("await_startup")


class RestartAfterRound(CoordinatorObserver):
    """An observer that stops and starts the broker's application once round N committed."""

    def __init__(self, round_: int) -> None:
        self.round = round_
        self.task: asyncio.Task[None] | None = None

    def version_committed(self, row: VersionSummary) -> None:
        if row.round == self.round and self.task is None:
            self.task = asyncio.create_task(restart_broker())


async def test_a_broker_restart_mid_federation_loses_and_double_counts_nothing(
    tmp_path: Path, federation: str
):
    rounds, n = 6, 3
    plan = SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=federation, participants=n, rounds=rounds, state_dir=tmp_path,
            round_timeout=120, linger_seconds=5,
        ),
        participant=ParticipantConfig(federation=federation, participant_id="p"),
        broker_url=BROKER_URL,
        profiles=tuple(ParticipantProfile(i, delay_seconds=0.5) for i in range(n)),
    )  # fmt: skip
    restart = RestartAfterRound(2)
    try:
        result = await asyncio.wait_for(simulate(plan, SyntheticApp(params=1000), [restart]), 180)
        assert restart.task is not None and restart.task.done()
        restart.task.result()
        assert result.model_version == rounds
        assert result.updates_incorporated == rounds * n
        assert [len(h["participants"]) for h in result.history] == [n] * rounds
        step = SyntheticApp.fedavg_step(range(n))
        for tensor in load_checkpoint(checkpoint_path(tmp_path / "models", rounds)).values():
            np.testing.assert_allclose(tensor, rounds * step, rtol=1e-5)
    finally:
        if restart.task is not None and not restart.task.done():
            await restart.task
        await rabbitmqctl("await_startup")
        async with AmqpTransport(BROKER_URL) as transport:
            await Topology(federation).delete(transport, [f"p{i}" for i in range(n)])


class RestartOnFirstFold(CoordinatorObserver):
    """Restarts the broker once the coordinator holds a folded update, then notes when the
    broker's redelivery of that update has been settled as a duplicate."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.duplicate_settled = asyncio.Event()

    def update_seen(self, update: UpdateSeen) -> None:
        if update.accepted and self.task is None:
            self.task = asyncio.create_task(restart_broker())
        elif update.reason == "duplicate":
            self.duplicate_settled.set()


async def test_a_held_update_redelivered_after_a_broker_restart_stays_on_the_broker(
    tmp_path: Path, federation: str
):
    """After a reconnect the broker redelivers the held update; the old delivery's channel
    is gone. If the coordinator acked the new copy and kept the old, a coordinator dying
    before the commit would leave nothing to redeliver: the update would be lost."""
    app = SyntheticApp(params=100)
    topology = Topology(federation)
    meta = UpdateMeta(
        federation=federation, participant="p0", round=1, base_version=0, num_examples=5
    )
    body = encode_message(meta, {k: np.ones_like(v) for k, v in app.initial_weights().items()})
    config = CoordinatorConfig(
        federation=federation, participants=2, rounds=1, state_dir=tmp_path, round_timeout=300
    )
    watch = RestartOnFirstFold()
    try:
        async with AmqpTransport(BROKER_URL) as sender:
            await topology.declare_core(sender)
            await sender.publish(
                topology.updates, UPDATE_KEY, body, message_id=meta.update_id, mandatory=True
            )
        async with AmqpTransport(BROKER_URL) as own:
            running = asyncio.create_task(Coordinator(config, app, own, [watch]).run())
            await asyncio.wait_for(watch.duplicate_settled.wait(), 120)
            running.cancel()  # the coordinator dies before the version's commit
            await asyncio.gather(running, return_exceptions=True)
        async with AmqpTransport(BROKER_URL) as probe:
            assert await probe.queue_depth(topology.updates) == 1  # nothing lost
    finally:
        if watch.task is not None:
            await watch.task
        await rabbitmqctl("await_startup")
        async with AmqpTransport(BROKER_URL) as transport:
            await topology.delete(transport, [])
