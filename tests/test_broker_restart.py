"""The broker restarts mid-federation: nothing is lost and nothing is counted twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.records import RoundHistory
from fedq.messages.amqp import AmqpTransport
from fedq.messages.topology import Topology
from fedq.participant.worker import ParticipantConfig
from fedq.simulation import SimulationPlan, Straggler, simulate
from tests.conftest import BROKER_URL


async def rabbitmqctl(*args: str) -> None:
    process = await asyncio.create_subprocess_exec("rabbitmqctl", "-q", *args)
    assert await process.wait() == 0, f"rabbitmqctl {' '.join(args)} failed"


class RestartAfterRound(CoordinatorObserver):
    """An observer that stops and starts the broker's application once round N committed."""

    def __init__(self, round_: int) -> None:
        self.round = round_
        self.task: asyncio.Task[None] | None = None

    async def _restart(self) -> None:
        await rabbitmqctl("stop_app")
        await asyncio.sleep(1.0)
        await rabbitmqctl("start_app")
        await rabbitmqctl("await_startup")

    def version_committed(self, row: RoundHistory) -> None:
        if row.round == self.round and self.task is None:
            self.task = asyncio.create_task(self._restart())


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
        stragglers=tuple(Straggler(i, delay_seconds=0.5) for i in range(n)),
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
