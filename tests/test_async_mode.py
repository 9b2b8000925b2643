"""Async mode (FedBuff) on the real RabbitMQ: versions at the pace of the fast participants,
the slow ones' updates folded with s(tau) = (1 + tau)^-a or refused beyond max staleness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger
from fedq.messages.amqp import AmqpTransport
from fedq.messages.topology import Topology
from fedq.participant.config import ParticipantConfig
from fedq.scenario import ParticipantProfile
from fedq.simulation import SimulationPlan, simulate
from tests.conftest import BROKER_URL
from tests.helpers import Commits, Straggler, run_fedq

pytestmark = [pytest.mark.broker, pytest.mark.processes]

SLOW = (5, 6, 7)


async def test_async_versions_follow_the_fast_and_weigh_the_slow_by_staleness(
    tmp_path: Path, federation: str
):
    exponent, versions = 0.5, 10
    config = CoordinatorConfig(
        federation=federation,
        participants=8,
        rounds=versions,
        state_dir=tmp_path,
        mode="async",
        quorum=4,
        staleness_exponent=exponent,
        max_staleness=3,
        linger_seconds=10,
    )
    plan = SimulationPlan(
        coordinator=config,
        participant=ParticipantConfig(federation=federation, participant_id="p"),
        broker_url=BROKER_URL,
        # Training is instant in this app: the delay is the round's time.
        profiles=tuple(ParticipantProfile(i, delay_seconds=0.2) for i in range(8)),
    )
    # The slow train on the newest model v until v + 2 is committed: slow by construction,
    # whatever the machine's load, so each of their updates folded is at least 2 stale.
    commits = Commits()
    app = Straggler(2000, commits, late=set(SLOW), until=lambda v: v + 2, last=versions)
    try:
        result = await simulate(plan, app, [commits])
    finally:
        async with AmqpTransport(BROKER_URL) as transport:
            await Topology(federation).delete(transport, [f"p{i}" for i in range(8)])
    assert result.mode == "async" and result.model_version == versions

    ledger = UpdateLedger(tmp_path / "ledger.sqlite")
    expected = 0.0
    for version in range(1, versions + 1):
        updates = ledger.updates_of(version)
        assert len(updates) == 4
        for u in updates:
            tau = version - 1 - u.base_version
            assert u.round is None and u.staleness == tau and 0 <= tau <= 3
            assert u.weight == pytest.approx(u.num_examples * (1 + tau) ** -exponent, rel=1e-12)
        index = [int(u.participant[1:]) for u in updates]
        expected += sum(
            u.weight * SyntheticApp.delta_value(i) for u, i in zip(updates, index, strict=True)
        ) / sum(u.num_examples for u in updates)
    rows = [u for v in range(1, versions + 1) for u in ledger.updates_of(v)]
    slow = [u for u in rows if int(u.participant[1:]) in SLOW]
    fast = [u for u in rows if int(u.participant[1:]) not in SLOW]
    # Versions come at the fast participants' pace: the first two are made without the
    # slow, whose updates come late (at least 2 versions), or are refused as too stale.
    first = ledger.updates_of(1) + ledger.updates_of(2)
    assert not any(int(u.participant[1:]) in SLOW for u in first)
    assert all(u.staleness >= 2 for u in slow)
    assert len(fast) + len(slow) == 4 * versions
    refused_stale = result.rejected_by_reason.get("stale", 0)
    assert any(u.staleness > 0 for u in slow) or refused_stale > 0
    model = load_checkpoint(checkpoint_path(tmp_path / "models", versions))
    for tensor in model.values():
        np.testing.assert_allclose(tensor, expected, rtol=1e-5)

    history = run_fedq("history", "--state-dir", str(tmp_path))
    assert history.returncode == 0, history.stderr
    stale = next(u for u in rows if u.staleness > 0)
    assert f"{stale.participant} (v{stale.base_version}, tau {stale.staleness})" in history.stdout
