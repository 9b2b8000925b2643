"""Stragglers and churn: who was late or missing (fedq.coordinator.attendance), dropout in a
participant, and a scenario of 30% stragglers (5x slower) and 10% dropout run to the end on
the real RabbitMQ in quorum mode and in async mode, its history naming who was late or missing.

On the synthetic app training takes milliseconds, so the scenario
(deploy/scenarios/stragglers-synthetic.toml) emulates a round's time with ``delay_seconds``:
0.1 s for everyone, 0.5 s (5x) for the stragglers, who also have ``slowdown = 5`` (5x their
real training time, a few milliseconds more).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedq import cli
from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.attendance import Attendance, LateUpdate, attendance, describe_late, natural
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.records import VersionSummary
from fedq.experiments.dropout import drops_out
from fedq.participant.config import ParticipantConfig
from fedq.participant.worker import LocalUpdate, ParticipantStats
from fedq.scenario import ParticipantProfile, load_scenario, profiles
from fedq.simulation import SimulationPlan, simulate_with_participants
from tests.conftest import BROKER_URL
from tests.helpers import Commits, Straggler

pytestmark = pytest.mark.broker

N = 10
SCENARIO = Path(__file__).resolve().parent.parent / "deploy/scenarios/stragglers-synthetic.toml"


# ------------------------------------------------------------------ lateness, pure
def row(
    version: int, updates: list[tuple[str, int, int]], *, rounds: bool = True
) -> VersionSummary:
    return VersionSummary(
        version=version,
        round=version if rounds else None,
        closed_by="quorum",
        n_updates=len(updates),
        participants=[p for p, _, _ in updates],
        rejected={},
        seconds=0.1,
        metrics={},
        updates=updates,
    )


def refusal(participant: str | None, base: int | None, during: int, reason: str) -> dict[str, Any]:
    return {
        "update_id": "u",
        "participant": participant,
        "round": None if base is None else base + 1,
        "base_version": base,
        "during_version": during,
        "reason": reason,
        "detail": "",
        "at": 0.0,
    }


def by_version(found: list[Attendance]) -> dict[int, Attendance]:
    return {a.version: a for a in found}


def test_round_mode_a_refused_straggler_is_late_and_a_silent_one_missing():
    rows = [
        row(1, [("p0", 0, 0), ("p1", 0, 0)]),
        row(2, [("p0", 1, 0), ("p2", 1, 0)]),
    ]
    rejections = [
        refusal("p2", 0, 1, "stale"),  # round 1's update after round 1 closed
        refusal("p1", 1, 2, "stale"),  # round 2's, after the federation was done
        refusal("p2", 1, 1, "duplicate"),  # changes nothing
        refusal(None, None, 1, "malformed"),  # nobody's
        refusal("intruder", 1, 1, "forged"),  # not a participant of the federation
    ]
    found = by_version(attendance(rows, rejections))
    assert found[1].on_time == ["p0", "p1"]
    assert found[1].late == [LateUpdate("p2", 0, None, 1)]
    assert found[1].missing == [] and found[1].refused == []
    assert found[2].on_time == ["p0", "p2"]
    assert found[2].late == [LateUpdate("p1", 1, None, 1)]
    assert found[2].missing == []


def test_round_mode_a_folded_late_update_is_late_in_its_round_on_time_in_none():
    rows = [
        row(1, [("p0", 0, 0), ("p1", 0, 0)]),
        row(2, [("p0", 1, 0), ("p1", 1, 0), ("p2", 0, 1)]),  # p2's round 1 update, folded
        row(3, [("p0", 2, 0), ("p1", 2, 0)]),
    ]
    rejections = [refusal("p3", 2, 2, "norm_exceeded")]
    found = by_version(attendance(rows, rejections))
    assert found[1].late == [LateUpdate("p2", 0, 2, 1)]
    assert found[1].missing == ["p3"]
    assert found[2].on_time == ["p0", "p1"] and found[2].late == []
    assert found[2].missing == ["p2", "p3"]  # nothing of theirs on model v1
    assert found[3].refused == ["p3"] and found[3].missing == ["p2"]
    assert describe_late(found[1].late) == "p2 (tau 1)"


def test_async_mode_a_version_is_a_window_of_what_arrived_while_the_last_was_current():
    rows = [
        row(1, [("p0", 0, 0), ("p1", 0, 0)], rounds=False),
        row(2, [("p0", 1, 0), ("p2", 0, 1)], rounds=False),
        row(3, [("p0", 2, 0), ("p1", 1, 1)], rounds=False),
    ]
    rejections = [
        refusal("p3", 0, 2, "stale"),  # arrived while v2 was current: window of v3
        refusal("p2", 2, 3, "stale"),  # after the last version: in no window
    ]
    found = by_version(attendance(rows, rejections))
    assert found[1].on_time == ["p0", "p1"] and found[1].missing == ["p2", "p3"]
    assert found[2].on_time == ["p0"] and found[2].late == [LateUpdate("p2", 0, 2, 1)]
    assert found[2].missing == ["p1", "p3"]
    assert found[3].late == [LateUpdate("p1", 1, 3, 1), LateUpdate("p3", 0, None, 2)]
    assert found[3].missing == ["p2"]
    assert describe_late(found[3].late) == "p1 (tau 1), p3 (refused)"


def test_participants_are_listed_in_natural_order():
    ids = ["p10", "p2", "p1", "q0"]
    assert sorted(ids, key=natural) == ["p1", "p2", "p10", "q0"]
    found = attendance([row(1, [(p, 0, 0) for p in ids])], [])
    assert found[0].on_time == ["p1", "p2", "p10", "q0"]


# ------------------------------------------------------------ dropout, embedded broker
async def test_a_participant_drops_exactly_the_models_its_seed_says_and_sends_nothing_for_them(
    tmp_path: Path, federation: str
):
    n, seed, p = 4, 3, 0.3
    plan = SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=federation,
            participants=n,
            rounds=6,
            state_dir=tmp_path,
            quorum=1,
            linger_seconds=5,
        ),
        participant=ParticipantConfig(federation=federation, participant_id="p"),
        profiles=tuple(ParticipantProfile(i, dropout=p) for i in range(n)),
        dropout_seed=seed,
    )
    sent: list[LocalUpdate] = []
    result, stats = await simulate_with_participants(plan, SyntheticApp(params=10), (), sent.append)
    assert result.model_version == 6 and len(stats) == n
    for s in stats:
        trained = {r.version for r in sent if r.participant == s.participant}
        assert s.rounds_dropped == len(s.dropped_versions)
        assert all(drops_out(seed, s.participant, v, p) for v in s.dropped_versions)
        assert not trained & set(s.dropped_versions)
        # every model it trained on was one its seed lets it keep
        assert not any(drops_out(seed, s.participant, v, p) for v in trained)
    assert sum(s.rounds_dropped for s in stats) > 0


# ------------------------------------------------------------- the scenario, RabbitMQ
class Run:
    """What one scenario run did, as the participants saw it, and its history."""

    def __init__(
        self, sent: list[LocalUpdate], stats: list[ParticipantStats], history: dict[str, Any]
    ) -> None:
        self.sent = {(r.participant, r.version) for r in sent}
        self.stats = {s.participant: s for s in stats}
        self.history = history
        self.attendance = {a["version"]: a for a in history["attendance"]}

    def senders(self, base: int) -> set[str]:
        return {p for p, v in self.sent if v == base}

    def late(self, version: int) -> list[dict[str, Any]]:
        return list(self.attendance[version]["late"])


async def run_scenario(
    tmp_path: Path, federation: str, **coordinator: Any
) -> tuple[Run, set[str], int]:
    scenario = load_scenario(SCENARIO)
    found = profiles(scenario, N)
    slow = {f"p{p.index}" for p in found if p.group == "stragglers"}
    assert len(slow) == 3 and all(p.dropout == 0.1 for p in found)  # 30% stragglers, 10% dropout
    fast = min(p.delay_seconds for p in found)
    assert all(p.delay_seconds == 5 * fast and p.slowdown == 5 for p in found if p.group)
    config = CoordinatorConfig(
        federation=federation,
        participants=N,
        state_dir=tmp_path / "state" / federation,
        round_timeout=5.0,
        linger_seconds=15,
        **coordinator,
    )
    plan = SimulationPlan(
        coordinator=config,
        participant=ParticipantConfig(federation=federation, participant_id="p"),
        broker_url=BROKER_URL,
        profiles=found,
        dropout_seed=scenario.seed,
    )
    sent: list[LocalUpdate] = []
    # Beyond the scenario's delays, a straggler trains on the newest model v only once
    # v + 1 is committed: late by construction, however loaded the machine.
    commits = Commits()
    held = {p.index for p in found if p.group == "stragglers"}
    app = Straggler(1000, commits, late=held, until=lambda v: v + 1, last=config.rounds)
    result, stats = await simulate_with_participants(plan, app, [commits], sent.append)
    assert result.model_version == config.rounds and len(stats) == N
    # In this process: `fedq history` reads the ledger the run wrote, as it would in its own.
    shown = CliRunner().invoke(cli.app, ["history", "--state-dir", str(config.state_dir), "--json"])
    assert shown.exit_code == 0, shown.output
    run = Run(sent, stats, json.loads(shown.stdout))
    table = CliRunner().invoke(cli.app, ["history", "--state-dir", str(config.state_dir)])
    assert table.exit_code == 0, table.output
    header = next(line for line in table.stdout.splitlines() if "version" in line)
    assert "late" in header and "missing" in header
    return run, slow, scenario.seed


def dropped(run: Run) -> Iterator[tuple[str, int]]:
    for participant, s in run.stats.items():
        for version in s.dropped_versions:
            yield participant, version


async def test_stragglers_and_dropout_in_quorum_mode_history_names_the_late_and_missing(
    tmp_path: Path, federation: str
):
    rounds = 6
    run, slow, seed = await run_scenario(
        tmp_path, federation, mode="quorum", rounds=rounds, quorum=7, min_quorum=5
    )
    everyone = {f"p{i}" for i in range(N)}
    assert sorted(run.attendance) == list(range(1, rounds + 1))
    for version in range(1, rounds + 1):
        a = run.attendance[version]
        late = {u["participant"] for u in a["late"]}
        assert all(u["base_version"] == version - 1 for u in a["late"])
        # on time or late: exactly those who sent an update on model v - 1
        assert set(a["on_time"]) | late == run.senders(version - 1)
        assert not set(a["on_time"]) & late and a["refused"] == []
        # missing: everyone else, the ones who dropped model v - 1 among them
        assert set(a["missing"]) == everyone - run.senders(version - 1)
        assert {p for p, v in dropped(run) if v == version - 1} <= set(a["missing"])
    # Dropout is the seed's: the participants dropped only what drops_out says.
    assert all(drops_out(seed, p, v, 0.1) for p, v in dropped(run))
    assert not any((p, v) in run.sent for p, v in dropped(run))
    assert len(list(dropped(run))) > 0
    # Late are the slow: 7 fast participants fill a quorum of 7, stragglers wait for the next.
    late_ones = {u["participant"] for v in run.attendance for u in run.late(v)}
    assert late_ones and late_ones <= slow


async def test_stragglers_and_dropout_in_async_mode_history_accounts_for_every_update(
    tmp_path: Path, federation: str
):
    versions = 8
    run, slow, seed = await run_scenario(
        tmp_path, federation, mode="async", rounds=versions, quorum=5, min_quorum=3
    )
    # Every update the participants sent is in exactly one version's window, on time (on the
    # model just before) or late (with its base), or refused: after the last version, or as
    # a participant's second update in one version (one per participant per version).
    shown: list[tuple[str, int]] = []
    for version, a in run.attendance.items():
        assert a["round"] is None and a["refused"] == []
        shown += [(p, version - 1) for p in a["on_time"]]
        shown += [(u["participant"], u["base_version"]) for u in a["late"]]
        assert all(u["staleness"] >= 1 for u in a["late"])
        assert all(u["folded_into"] in (version, None) for u in a["late"])
    after = [
        (r["participant"], r["base_version"])
        for r in run.history["rejections"]
        if (r["during_version"] == versions and r["reason"] == "stale")
        or r["reason"] == "already_submitted"
    ]
    assert sorted(shown + after) == sorted(run.sent)
    assert all(drops_out(seed, p, v, 0.1) for p, v in dropped(run))
    assert not any((p, v) in run.sent for p, v in dropped(run))
    # A straggler sends on model v once v + 1 is committed: never on time (late, or
    # refused after the last version).
    assert not slow & {p for a in run.attendance.values() for p in a["on_time"]}
    missing = [p for a in run.attendance.values() for p in a["missing"]]
    assert missing  # K = 5 of 10: some participants are missing from every window
    for a in run.attendance.values():
        counted = set(a["on_time"]) | {u["participant"] for u in a["late"]}
        assert set(a["missing"]) == {f"p{i}" for i in range(N)} - counted
