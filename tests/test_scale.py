"""1,000 virtual participants in one process: one connection, a queue each, every round done.

On the real RabbitMQ. The participants share one AmqpTransport (one connection, one broker
identity) as ``fedq participant --count`` runs them; the coordinator has its own, as the
``fedq coordinator`` process would. What is checked, through RabbitMQ's management API:
each participant declared and consumes its own model queue; all of them are on ONE
connection, whose channels stay within what the transport promises (one per consumer, one
for publishing, a small pool for declarations); quorum mode completes every round with K of
the N; FedAvg's result is exactly the one the rounds' contributors make; and every
participant deletes its own queue at the end.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.collect import NAMED_LEFT_BEHIND
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.service import Coordinator
from fedq.management import default_management_url
from fedq.messages.amqp import DECLARING_CHANNELS, AmqpTransport
from fedq.messages.topology import Topology
from fedq.participant.app import Partition
from fedq.participant.config import ParticipantConfig
from fedq.simulation import run_participants
from tests.conftest import BROKER_URL
from tests.helpers import UpdatesSeen, until_async, while_progressing

pytestmark = pytest.mark.broker

#: 1,000 with quorum 100, as the issue asks: 31 s here with the 2 cores otherwise quiet;
#: 59 to 64 s beside `stress-ng --cpu 2` (2026-12-05), more than 300 s in a loaded CI run.
N, K, ROUNDS = 1000, 100, 3


class Management:
    """The management API calls this test makes; the broker URL's login."""

    def __init__(self) -> None:
        broker = urllib.parse.urlsplit(BROKER_URL)
        self.client = httpx.AsyncClient(
            base_url=default_management_url(BROKER_URL).rstrip("/") + "/api",
            auth=(broker.username or "guest", broker.password or "guest"),
            timeout=10.0,
        )

    async def get(self, path: str, columns: str) -> list[dict[str, Any]]:
        response = await self.client.get(path, params={"columns": columns})
        response.raise_for_status()
        return list(response.json())

    async def model_queues(self, federation: str) -> dict[str, int]:
        """Each model queue of ``federation`` and its consumers."""
        prefix = Topology(federation).model_queue("")
        rows = await self.get("/queues/%2F", "name,consumers")
        return {q["name"]: int(q.get("consumers", 0)) for q in rows if q["name"].startswith(prefix)}

    async def connections(self, name: str) -> list[dict[str, Any]]:
        rows = await self.get("/connections", "name,channels,client_properties")
        return [c for c in rows if c.get("client_properties", {}).get("connection_name") == name]


@pytest.mark.broker
async def test_a_thousand_virtual_participants_on_one_connection_complete_every_round(
    tmp_path: Path, federation: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fedq.coordinator")
    app = SyntheticApp(params=1000)
    config = CoordinatorConfig(
        federation=federation, participants=N, quorum=K, rounds=ROUNDS, state_dir=tmp_path,
        round_timeout=3600, linger_seconds=5,
    )  # fmt: skip
    ids = [f"v-{i}" for i in range(N)]
    configs = [
        ParticipantConfig(federation=federation, participant_id=pid, partition=Partition(i, N))
        for i, pid in enumerate(ids)
    ]
    name = f"fedq test_scale {federation}"
    management = Management()
    async with (
        AmqpTransport(BROKER_URL, name=f"{name} coordinator") as own,
        AmqpTransport(BROKER_URL, name=name) as shared,
    ):
        seen = UpdatesSeen()
        coordinator = Coordinator(config, app, own, [seen])
        await coordinator.topology.declare_core(own)  # the joins wait in its queue
        workers = asyncio.create_task(run_participants(configs, app, shared))
        try:
            # Every participant has its own queue and consumes it, before any model is out.
            queues = await until_async(
                lambda: management.model_queues(federation),
                lambda q: len(q) == N and all(c == 1 for c in q.values()),
                what=f"{N} model queues, each with its consumer",
                within=120,
                every=0.5,  # the management API's statistics lag by seconds
            )
            assert sorted(queues) == sorted(Topology(federation).model_queue(p) for p in ids)
            assert all(consumers == 1 for consumers in queues.values())
            # ... all on one connection, a channel per consumer plus a few.
            connections = await until_async(
                lambda: management.connections(name),
                lambda c: len(c) == 1 and int(c[0].get("channels", 0)) >= N,
                what=f"one connection with at least {N} channels",
                within=60,
                every=0.5,
            )
            assert len(connections) == 1
            assert N <= int(connections[0]["channels"]) <= N + 1 + DECLARING_CHANNELS

            # As long as it takes while the coordinator keeps taking updates (about 1,000 a
            # version, 900 of them refused as stale): on a loaded machine that can be
            # minutes, and only a stall fails.
            result = await while_progressing(
                coordinator.run(), lambda: seen.count, what="the federation", quiet=120
            )
            stats = await asyncio.wait_for(workers, 120)  # each leaves on federation.done
        finally:
            workers.cancel()
            await asyncio.gather(workers, return_exceptions=True)
            left = await management.model_queues(federation)
            await Topology(federation).delete(own, ids)
            await management.client.aclose()

    assert sorted(s.participant for s in stats) == sorted(ids)
    assert result.rounds_completed == ROUNDS and result.model_version == ROUNDS
    assert result.updates_incorporated == ROUNDS * K
    contributors = [row["participants"] for row in result.history]
    assert all(len(set(c)) == K and set(c) <= set(ids) for c in contributors)
    # FedAvg of exactly the contributors, round after round: nothing lost, nothing twice.
    step = sum(SyntheticApp.fedavg_step(int(p.split("-")[1]) for p in c) for c in contributors)
    for tensor in load_checkpoint(checkpoint_path(tmp_path / "models", ROUNDS)).values():
        np.testing.assert_allclose(tensor, step, rtol=1e-5)
    assert left == {}, "every participant deletes its own queue when the federation is done"
    # Hundreds left behind each version, named in a few lines: 5 of their own, one for the rest.
    behind = [r for r in caplog.records if "refused as stale" in r.getMessage()]
    assert len(behind) <= (NAMED_LEFT_BEHIND + 1) * ROUNDS
    assert sum(int(r.getMessage().split()[0]) for r in behind if "more" in r.getMessage()) > K
