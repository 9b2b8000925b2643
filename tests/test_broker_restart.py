"""The broker restarts mid-federation: nothing is lost and nothing is counted twice. On a
RabbitMQ node of these tests' own (tests/rabbit_node.py), never the shared one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

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
from tests.rabbit_node import RabbitNode, free_ports, rabbit_node

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A RabbitMQ node of these tests' own: restarting it stops no other test."""
    [port] = free_ports(1)
    config = f"listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"
    with rabbit_node(tmp_path_factory.mktemp("restart-node"), config, amqp_port=port) as booted:
        yield booted


def url_of(node: RabbitNode) -> str:
    return f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/"


async def restart_broker(node: RabbitNode) -> None:
    """stop_app, start_app: every client's connection is closed, and comes back."""
    await asyncio.to_thread(node.restart_app)


class RestartAfterRound(CoordinatorObserver):
    """An observer that stops and starts the broker's application once round N committed.

    The stop happens in the hook itself, the federation's event loop held meanwhile, so the
    broker is down before round N + 1 can commit, however fast the rounds run (a restart
    left to a task could come after the last round on a loaded machine); the start and
    the wait for it run in a task."""

    def __init__(self, round_: int, node: RabbitNode) -> None:
        self.round = round_
        self.node = node
        self.task: asyncio.Future[None] | None = None

    def version_committed(self, row: VersionSummary) -> None:
        if row.round == self.round and self.task is None:
            self.node.rabbitmqctl("stop_app")
            self.task = asyncio.ensure_future(asyncio.to_thread(self.node.start_app))


async def test_a_broker_restart_mid_federation_loses_and_double_counts_nothing(
    tmp_path: Path, federation: str, node: RabbitNode
):
    broker = url_of(node)
    rounds, n = 6, 3
    plan = SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=federation, participants=n, rounds=rounds, state_dir=tmp_path,
            round_timeout=120, linger_seconds=5,
        ),
        participant=ParticipantConfig(federation=federation, participant_id="p"),
        broker_url=broker,
        profiles=tuple(ParticipantProfile(i, delay_seconds=0.5) for i in range(n)),
    )  # fmt: skip
    restart = RestartAfterRound(2, node)
    try:
        result = await asyncio.wait_for(simulate(plan, SyntheticApp(params=1000), [restart]), 180)
        assert restart.task is not None  # the broker went down after round 2, mid-federation
        await asyncio.wait_for(restart.task, 120)  # its start: the last rounds may outrun it
        assert result.model_version == rounds
        assert result.updates_incorporated == rounds * n
        assert [len(h["participants"]) for h in result.history] == [n] * rounds
        step = SyntheticApp.fedavg_step(range(n))
        for tensor in load_checkpoint(checkpoint_path(tmp_path / "models", rounds)).values():
            np.testing.assert_allclose(tensor, rounds * step, rtol=1e-5)
    finally:
        if restart.task is not None and not restart.task.done():
            await restart.task
        await asyncio.to_thread(node.await_startup)
        async with AmqpTransport(broker) as transport:
            await Topology(federation).delete(transport, [f"p{i}" for i in range(n)])


class RestartOnFirstFold(CoordinatorObserver):
    """Restarts the broker once the coordinator holds a folded update, then notes when the
    broker's redelivery of that update has been settled as a duplicate."""

    def __init__(self, node: RabbitNode) -> None:
        self.node = node
        self.task: asyncio.Task[None] | None = None
        self.duplicate_settled = asyncio.Event()

    def update_seen(self, update: UpdateSeen) -> None:
        if update.accepted and self.task is None:
            self.task = asyncio.create_task(restart_broker(self.node))
        elif update.reason == "duplicate":
            self.duplicate_settled.set()


async def test_a_held_update_redelivered_after_a_broker_restart_stays_on_the_broker(
    tmp_path: Path, federation: str, node: RabbitNode
):
    """After a reconnect the broker redelivers the held update; the old delivery's channel
    is gone. If the coordinator acked the new copy and kept the old, a coordinator dying
    before the commit would leave nothing to redeliver: the update would be lost."""
    broker = url_of(node)
    app = SyntheticApp(params=100)
    topology = Topology(federation)
    meta = UpdateMeta(
        federation=federation, participant="p0", round=1, base_version=0, num_examples=5
    )
    body = encode_message(meta, {k: np.ones_like(v) for k, v in app.initial_weights().items()})
    config = CoordinatorConfig(
        federation=federation, participants=2, rounds=1, state_dir=tmp_path, round_timeout=300
    )
    watch = RestartOnFirstFold(node)
    try:
        async with AmqpTransport(broker) as sender:
            await topology.declare_core(sender)
            await sender.publish(
                topology.updates, UPDATE_KEY, body, message_id=meta.update_id, mandatory=True
            )
        async with AmqpTransport(broker) as own:
            running = asyncio.create_task(Coordinator(config, app, own, [watch]).run())
            await asyncio.wait_for(watch.duplicate_settled.wait(), 120)
            running.cancel()  # the coordinator dies before the version's commit
            await asyncio.gather(running, return_exceptions=True)
        async with AmqpTransport(broker) as probe:
            assert await probe.queue_depth(topology.updates) == 1  # nothing lost
    finally:
        if watch.task is not None:
            await watch.task
        await asyncio.to_thread(node.await_startup)
        async with AmqpTransport(broker) as transport:
            await topology.delete(transport, [])
