"""Async mode (FedBuff) on the real RabbitMQ: versions at the pace of the fast participants,
the slow ones' updates folded with s(tau) = (1 + tau)^-a or refused beyond max staleness."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.result import FederationResult
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
    # The slow train on the newest model v until v + 2 is committed: slow by construction,
    # whatever the machine's load, so each of their updates folded is at least 2 stale.
    result = await straggling(
        tmp_path,
        federation,
        versions,
        [],
        size=2000,
        behind=2,
        staleness_exponent=exponent,
        max_staleness=3,
    )
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


class LeftBehind(CoordinatorObserver):
    """Who the coordinator told it was left behind: (participant, model sent, refusals)."""

    def __init__(self) -> None:
        self.told: list[tuple[str, int, int]] = []

    def participant_left_behind(self, participant: str, version: int, refused: int) -> None:
        self.told.append((participant, version, refused))


async def straggling(
    tmp_path: Path,
    federation: str,
    versions: int,
    observers: list[CoordinatorObserver],
    *,
    size: int = 64,
    behind: int = 3,
    **settings: Any,
) -> FederationResult:
    """8 participants in async mode, K = 4, training on ``size`` values of the synthetic
    app; p5, p6 and p7 train on model v only once v + ``behind`` is committed: every update
    of theirs is at least ``behind`` versions behind."""
    config = CoordinatorConfig(
        federation=federation,
        participants=8,
        rounds=versions,
        state_dir=tmp_path,
        mode="async",
        quorum=4,
        linger_seconds=10,
        **{"async_remedy": "none", **settings},  # FedBuff, unless a remedy is named
    )
    plan = SimulationPlan(
        coordinator=config,
        participant=ParticipantConfig(federation=federation, participant_id="p"),
        broker_url=BROKER_URL,
        profiles=tuple(ParticipantProfile(i, delay_seconds=0.2) for i in range(8)),
    )
    commits = Commits()
    app = Straggler(size, commits, late=set(SLOW), until=lambda v: v + behind, last=versions)
    return await simulate(plan, app, [commits, *observers])  # the fixture clears the broker


def stale_while_running(ledger: UpdateLedger, versions: int) -> list[dict[str, Any]]:
    """Refusals as stale before the last version (after it, every update is late)."""
    return [
        r for r in ledger.rejections() if r["reason"] == "stale" and r["during_version"] < versions
    ]


async def test_a_participant_whose_updates_keep_being_refused_as_stale_is_told_and_named(
    tmp_path: Path, federation: str, caplog: pytest.LogCaptureFixture
):
    left = LeftBehind()
    with caplog.at_level(logging.WARNING, logger="fedq.coordinator"):
        result = await straggling(tmp_path, federation, 12, [left], max_staleness=2)
    assert result.rejected_by_reason.get("stale", 0) >= 6
    slow = {f"p{i}" for i in SLOW}
    told = {who for who, _, _ in left.told}
    assert told >= slow  # (a fast one may be too, if twice in a row it came 3 behind)
    # Told after every second refusal in a row, and sent the model current then.
    assert all(refused % 2 == 0 and 0 < version <= 12 for _, version, refused in left.told)
    for who in told:
        named = [r for r in caplog.records if f"participant {who!r}" in r.getMessage()]
        assert len(named) == 1, "one line per participant, rate-limited"
        assert "refused as stale" in named[0].getMessage()
    ledger = UpdateLedger(tmp_path / "ledger.sqlite")
    folded = {u.participant for v in range(1, 13) for u in ledger.updates_of(v)}
    assert not folded & slow  # the cutoff refused them all: the remedy is --async-remedy


async def test_with_the_delay_adaptive_remedy_every_straggler_update_is_folded(
    tmp_path: Path, federation: str
):
    versions, exponent, tau_c = 12, 0.5, 2
    left = LeftBehind()
    result = await straggling(
        tmp_path,
        federation,
        versions,
        [left],
        async_remedy="delay_adaptive",
        delay_threshold=tau_c,
        staleness_exponent=exponent,
    )
    ledger = UpdateLedger(tmp_path / "ledger.sqlite")
    assert result.model_version == versions
    assert stale_while_running(ledger, versions) == [] and not left.told
    expected = 0.0
    slow_folded = set()
    for version in range(1, versions + 1):
        updates = ledger.updates_of(version)
        index = [int(u.participant[1:]) for u in updates]
        slow_folded |= {u.participant for u, i in zip(updates, index, strict=True) if i in SLOW}
        mean = sum(
            u.num_examples * (1 + u.staleness) ** -exponent * SyntheticApp.delta_value(i)
            for u, i in zip(updates, index, strict=True)
        ) / sum(u.num_examples for u in updates)
        tau_max = max(u.staleness for u in updates)
        expected += mean * (1.0 if tau_max <= tau_c else 1.0 / tau_max)
    assert slow_folded, "the stragglers' updates reach the model"
    assert any(max(u.staleness for u in ledger.updates_of(v)) > tau_c for v in range(1, 13))
    model = load_checkpoint(checkpoint_path(tmp_path / "models", versions))
    for tensor in model.values():
        np.testing.assert_allclose(tensor, expected, rtol=1e-5)


def ca2fl_by_hand(ledger: UpdateLedger, versions: int) -> tuple[float, set[int]]:
    """Every parameter of model ``versions`` (the synthetic app's deltas are one value per
    participant, so every model is one value too) and who was cached: CA2FL's
    v = h + sum_S n_i (u_i - h_i) / sum_S n_i, every update taken from the current model x
    (u_i = x_b + delta_i - x, x_b its base model; h_i = m_i - x, m_i the local model of
    i's cached update, 0 for one not cached yet; h the example-weighted mean of the cached
    h_j, 0 while none is); no s(tau)."""
    cached: dict[int, tuple[int, float]] = {}
    models = [0.0]
    for version in range(1, versions + 1):
        x = models[-1]
        updates = ledger.updates_of(version)
        assert all(u.weight == u.num_examples for u in updates)  # s(tau) = 1
        total = sum(u.num_examples for u in updates)
        weight = sum(n for n, _ in cached.values())
        step = sum(n * m for n, m in cached.values()) / weight - x if weight else 0.0
        local = {
            u.update_id: models[u.base_version] + SyntheticApp.delta_value(int(u.participant[1:]))
            for u in updates
        }
        for u in updates:
            i = int(u.participant[1:])
            old = cached[i][1] - x if i in cached else 0.0
            step += u.num_examples * (local[u.update_id] - x - old) / total
        models.append(x + step)
        for u in updates:
            cached[int(u.participant[1:])] = (u.num_examples, local[u.update_id])
    return models[-1], set(cached)


def mifa_by_hand(ledger: UpdateLedger, versions: int) -> tuple[float, set[int]]:
    """Every parameter of model ``versions`` with ``cached_mean``: each version the
    example-weighted mean of every participant's latest local model (m_i = x_b + delta_i,
    x_b its base model), the version's updates in their participants' places."""
    cached: dict[int, tuple[int, float]] = {}
    models = [0.0]
    for version in range(1, versions + 1):
        for u in ledger.updates_of(version):
            assert u.weight == u.num_examples  # s(tau) = 1
            local = models[u.base_version] + SyntheticApp.delta_value(int(u.participant[1:]))
            cached[int(u.participant[1:])] = (u.num_examples, local)
        models.append(sum(n * m for n, m in cached.values()) / sum(n for n, _ in cached.values()))
    return models[-1], set(cached)


@pytest.mark.parametrize(
    ("remedy", "by_hand"), [("cached", ca2fl_by_hand), ("cached_mean", mifa_by_hand)]
)
async def test_with_a_caching_remedy_each_version_is_made_of_the_cached_updates(
    tmp_path: Path,
    federation: str,
    remedy: str,
    by_hand: Callable[[UpdateLedger, int], tuple[float, set[int]]],
):
    versions = 12
    result = await straggling(tmp_path, federation, versions, [], async_remedy=remedy)
    ledger = UpdateLedger(tmp_path / "ledger.sqlite")
    assert result.model_version == versions and stale_while_running(ledger, versions) == []
    expected, cached = by_hand(ledger, versions)
    assert cached >= set(SLOW)
    model = load_checkpoint(checkpoint_path(tmp_path / "models", versions))
    for tensor in model.values():
        np.testing.assert_allclose(tensor, expected, rtol=1e-4)
    # One file per participant heard: the cache is bounded by N, not by the updates.
    assert len(list((tmp_path / "local-models").glob("*.npy"))) == len(cached)


async def test_the_cached_remedy_goes_on_after_a_restart_from_its_files(
    tmp_path: Path, federation: str
):
    """A coordinator stopped after v6 and started again on the same state dir rebuilds the
    cache from its files: v7 to v12 are calibrated as if it had never stopped."""
    await straggling(tmp_path, federation, 6, [], async_remedy="cached")
    result = await straggling(tmp_path, federation, 12, [], async_remedy="cached")
    assert result.model_version == 12
    ledger = UpdateLedger(tmp_path / "ledger.sqlite")
    expected, _ = ca2fl_by_hand(ledger, 12)
    model = load_checkpoint(checkpoint_path(tmp_path / "models", 12))
    for tensor in model.values():
        np.testing.assert_allclose(tensor, expected, rtol=1e-4)
