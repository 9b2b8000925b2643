"""Round mechanics on the real broker with the numpy app: exact FedAvg, deadlines, stale."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.observers import CoordinatorObserver
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import Weights
from fedq.messages.topology import Topology, UpdatesQueueType
from fedq.messages.transport import TransportError
from fedq.participant.config import ParticipantConfig
from fedq.scenario import ParticipantProfile
from fedq.simulation import SimulationPlan, simulate, simulate_with_participants
from tests.conftest import BROKER_URL
from tests.helpers import Commits, Straggler

pytestmark = pytest.mark.broker


def on_rabbitmq(
    federation: str,
    state_dir: Path,
    codec: str = "raw",
    stragglers: tuple[ParticipantProfile, ...] = (),
    **coordinator: Any,
) -> SimulationPlan:
    return SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=federation, state_dir=state_dir, codec=codec, **coordinator
        ),
        participant=ParticipantConfig(
            federation=federation, participant_id="p", update_codec=codec
        ),
        broker_url=BROKER_URL,
        profiles=stragglers,
    )


async def teardown(federation: str, n: int) -> None:
    async with AmqpTransport(BROKER_URL) as transport:
        await Topology(federation).delete(transport, [f"p{i}" for i in range(n)])


@pytest.mark.parametrize("queue", ["quorum", "classic"])
@pytest.mark.parametrize("codec", ["raw", "fp16"])
async def test_the_committed_model_is_the_example_weighted_mean_of_the_deltas(
    tmp_path: Path, federation: str, codec: str, queue: UpdatesQueueType
):
    plan = on_rabbitmq(federation, tmp_path, codec, participants=3, rounds=3, updates_queue=queue)
    try:
        result = await simulate(plan, SyntheticApp(params=5000))
        assert result.model_version == 3 and result.updates_incorporated == 9
        model = load_checkpoint(checkpoint_path(tmp_path / "models", 3))
        expected = 3 * SyntheticApp.fedavg_step([0, 1, 2])
        rtol = 1e-5 if codec == "raw" else 2e-3
        for tensor in model.values():
            np.testing.assert_allclose(tensor, expected, rtol=rtol)
    finally:
        await teardown(federation, 3)


async def test_a_deadline_closes_the_round_with_min_quorum_and_the_late_update_is_stale(
    tmp_path: Path, federation: str
):
    """p2 trains on model v0 until the last version, v2, is committed: both rounds close
    at their deadline without it, and its update comes after the end."""
    plan = on_rabbitmq(
        federation,
        tmp_path,
        participants=3,
        rounds=2,
        quorum=3,
        min_quorum=2,
        round_timeout=1.0,
        linger_seconds=30,
    )
    commits = Commits()
    app = Straggler(1000, commits, late={2}, until=lambda _: 2, last=2)
    try:
        result = await simulate(plan, app, [commits])
        assert [(h["closed_by"], h["participants"]) for h in result.history] == [
            ("deadline", ["p0", "p1"]),
            ("deadline", ["p0", "p1"]),
        ]
        # p2's round-1 update arrives in round 2; by then its queue holds only the newest
        # message (federation.done, which dropped model v1 and v2), so it sends no other.
        assert result.rejected_by_reason == {"stale": 1}
        model = load_checkpoint(tmp_path / "models" / "model-v000002.npz")
        expected = 2 * SyntheticApp.fedavg_step([0, 1])
        for tensor in model.values():
            np.testing.assert_allclose(tensor, expected, rtol=1e-5)
    finally:
        await teardown(federation, 3)


async def test_with_late_updates_folded_a_straggler_counts_in_the_next_round_at_s_tau(
    tmp_path: Path, federation: str
):
    """p2 trains on model v until v + 1 is committed (round r closed at its 2 s deadline
    without it): its update for round r arrives while round r + 1 is open and is folded
    there, tau = 1, weight n x 2^-0.5."""
    plan = on_rabbitmq(
        federation,
        tmp_path,
        participants=3,
        rounds=3,
        quorum=3,
        min_quorum=2,
        round_timeout=2.0,
        late_updates="fold",
        linger_seconds=30,
    )
    try:
        commits = Commits()
        app = Straggler(1000, commits, late={2}, until=lambda v: v + 1, last=3)
        await simulate(plan, app, [commits])
        ledger = UpdateLedger(tmp_path / "ledger.sqlite")
        expected = 0.0
        late = []
        for version in (1, 2, 3):
            updates = ledger.updates_of(version)
            for u in updates:
                tau = version - 1 - u.base_version
                assert u.staleness == tau
                assert u.weight == pytest.approx(u.num_examples * (1 + tau) ** -0.5, rel=1e-12)
                late += [u] if tau else []
            expected += sum(
                u.weight * SyntheticApp.delta_value(int(u.participant[1:])) for u in updates
            ) / sum(u.num_examples for u in updates)
        assert late and all(u.participant == "p2" and u.staleness == 1 for u in late)
        for tensor in load_checkpoint(checkpoint_path(tmp_path / "models", 3)).values():
            np.testing.assert_allclose(tensor, expected, rtol=1e-5)
    finally:
        await teardown(federation, 3)


async def test_a_finished_simulation_leaves_only_queues_that_hold_messages(
    tmp_path: Path, federation: str
):
    plan = on_rabbitmq(federation, tmp_path, participants=2, rounds=1)
    await simulate(plan, SyntheticApp(params=10))
    topology = Topology(federation)
    async with AmqpTransport(BROKER_URL) as transport:
        for queue in [topology.updates, topology.rejected, topology.coordinator] + [
            topology.model_queue(p) for p in ("p0", "p1")
        ]:
            with pytest.raises(TransportError):
                await transport.queue_depth(queue)


class Draws(CoordinatorObserver):
    """Each version's sample as the coordinator drew it, and whom it drew among (those it
    counted alive at that moment)."""

    def __init__(self) -> None:
        self.drawn: dict[int, tuple[list[str], list[str] | None]] = {}

    def sample_drawn(self, version: int, among: list[str], sampled: list[str] | None) -> None:
        self.drawn[version] = (among, sampled)


async def test_client_sampling_draws_who_trains_and_the_quorum_applies_within(
    tmp_path: Path, federation: str
):
    """6 participants, --sample-fraction 0.5 (3 drawn per version, seeded), K = 2: each
    version is made only of participants its model named, drawn as the federation's seed
    says among those alive when it opened; the others acked that model without training.
    (On a loaded machine a join can come after a model went out, or a heartbeat so late
    that its participant counts as silent at the draw: the draw is then among fewer.)"""
    plan = on_rabbitmq(
        federation, tmp_path, participants=6, rounds=5, quorum=2, sample_fraction=0.5,
        linger_seconds=5,
    )  # fmt: skip
    draws = Draws()
    try:
        result, stats = await simulate_with_participants(plan, SyntheticApp(params=100), [draws])
        assert result.model_version == 5
        ledger = UpdateLedger(tmp_path / "ledger.sqlite")
        seed = ledger.get_meta("dp_seed")
        sampled_versions = all_alive = 0
        for version in range(1, 6):
            among, sampled = draws.drawn[version - 1]
            if sampled is None:  # fewer than 3 alive: everyone trains
                continue
            assert sampled == sorted(random.Random(f"{seed}:{version - 1}").sample(among, 3))
            folded = {u.participant for u in ledger.updates_of(version)}
            assert folded <= set(sampled), (version, folded, sampled)
            sampled_versions += 1
            all_alive += len(among) == 6
        assert sampled_versions >= 3, draws.drawn
        assert sum(s.rounds_not_sampled for s in stats) >= 3 * all_alive
        assert "not_sampled" not in result.rejected_by_reason
    finally:
        await teardown(federation, 6)


class EvaluationCountingApp(SyntheticApp):
    """The synthetic app with an evaluation that records the models it was given (by the
    value of their first element, which each version moves)."""

    def __init__(self, params: int) -> None:
        super().__init__(params=params)
        self.evaluated: list[float] = []

    def evaluate(self, weights: Weights) -> dict[str, float]:
        first = float(next(iter(weights.values())).flat[0])
        self.evaluated.append(first)
        return {"first": first}


async def test_evaluate_every_evaluates_every_nth_version_and_the_last(
    tmp_path: Path, federation: str
):
    plan = on_rabbitmq(federation, tmp_path, participants=2, rounds=5, evaluate_every=2)
    app = EvaluationCountingApp(params=10)
    try:
        await simulate(plan, app)
        history = UpdateLedger(tmp_path / "ledger.sqlite").history()
        assert {h.version: h.metrics for h in history} == {
            1: {},
            2: {"first": app.evaluated[0]},
            3: {},
            4: {"first": app.evaluated[1]},
            5: {"first": app.evaluated[2]},
        }
        # Each evaluation was of its own version's model.
        for version, value in zip((2, 4, 5), app.evaluated, strict=True):
            model = load_checkpoint(checkpoint_path(tmp_path / "models", version))
            assert next(iter(model.values())).flat[0] == value
    finally:
        await teardown(federation, 2)
