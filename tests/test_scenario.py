"""Scenario files (fedq.scenario) and the dropout draw (fedq.experiments.dropout): parsing,
validation in one line, deterministic selection and draws, the flags on top."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedq.experiments.dropout import drops_out
from fedq.scenario import (
    ParticipantProfile,
    Scenario,
    ScenarioError,
    describe,
    heterogeneous,
    load_scenario,
    parse_scenario,
    profiles,
    with_flag,
)
from tests.helpers import run_fedq

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "deploy" / "scenarios"

STRAGGLERS = """
seed = 7
[default]
dropout = 0.1
[[groups]]
name = "stragglers"
fraction = 0.3
slowdown = 5.0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def test_a_fraction_group_takes_its_share_and_the_rest_keep_the_default(tmp_path: Path):
    scenario = load_scenario(write(tmp_path, STRAGGLERS))
    found = profiles(scenario, 10)
    assert [p.index for p in found] == list(range(10))
    slow = [p for p in found if p.group == "stragglers"]
    assert len(slow) == 3
    assert all(p.slowdown == 5.0 and p.dropout == 0.1 and p.delay_seconds == 0 for p in slow)
    rest = [p for p in found if p.group is None]
    assert all(p.slowdown == 1.0 and p.dropout == 0.1 for p in rest)
    assert profiles(scenario, 10) == found  # the seed decides, not the run
    picks = {
        tuple(p.index for p in profiles(scenario.model_copy(update={"seed": s}), 10) if p.group)
        for s in range(20)
    }
    assert len(picks) > 1  # another seed, other participants


@pytest.mark.parametrize("name", ["stragglers.toml", "stragglers-synthetic.toml"])
def test_the_sample_scenarios_are_30_percent_stragglers_at_5x_and_10_percent_dropout(name: str):
    found = profiles(load_scenario(SAMPLES / name), 10)
    assert sum(p.slowdown == 5.0 for p in found) == 3
    assert all(p.dropout == 0.1 for p in found)


def test_groups_are_disjoint_indices_first_then_fractions_in_order():
    scenario = parse_scenario(
        {
            "groups": [
                {"name": "half", "fraction": 0.5, "dropout": 0.2},
                {"name": "far", "indices": [0, 1], "delay_seconds": 2.0},
                {"name": "rest", "fraction": 0.3, "slowdown": 3.0},
            ]
        }
    )
    found = profiles(scenario, 10)
    groups = [p.group for p in found]
    assert groups[:2] == ["far", "far"]
    assert groups.count("half") == 5 and groups.count("rest") == 3 and groups.count(None) == 0
    far = found[0]
    assert (far.slowdown, far.dropout, far.delay_seconds) == (1.0, 0.0, 2.0)
    half = parse_scenario({"groups": [{"fraction": 0.5, "dropout": 0.2}]})
    assert sum(p.dropout == 0.2 for p in profiles(half, 5)) == 3  # 2.5 rounds half up


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"defaults": {}}, "defaults: unknown key"),
        ({"default": {"speed": 2}}, "default.speed: unknown key"),
        (
            {"groups": [{"fraction": 1.5}]},
            "groups.0.fraction: Input should be less than or equal to 1",
        ),
        ({"groups": [{"fraction": 0}]}, "groups.0.fraction: Input should be greater than 0"),
        ({"groups": [{"slowdown": 2}]}, "groups.0: a group selects participants by indices or"),
        ({"groups": [{"fraction": 0.1, "indices": [1]}]}, "groups.0: a group selects"),
        ({"groups": [{"indices": [1, 1]}]}, "groups.0: a group names an index twice"),
        ({"groups": [{"indices": [-1]}]}, "groups.0.indices.0: Input should be greater than"),
        ({"default": {"dropout": 1.0}}, "default.dropout: Input should be less than 1"),
        ({"default": {"slowdown": 0.5}}, "default.slowdown: Input should be greater than or"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ],
)
def test_a_bad_scenario_is_one_line_naming_the_key(data: dict[str, object], message: str):
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data, "s.toml")
    text = str(caught.value)
    assert text.startswith(f"s.toml: {message}") and "\n" not in text


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([{"indices": [3, 10]}], "group 0: index 10 but there are 10 participants"),
        (
            [{"name": "a", "indices": [3]}, {"name": "b", "indices": [3]}],
            "b: participant 3 is already in a; groups are disjoint",
        ),
        (
            [{"name": "a", "fraction": 0.8}, {"name": "b", "fraction": 0.3}],
            "b: fraction 0.3 of 10 is 3 participants but only 2 are in no earlier group",
        ),
    ],
)
def test_a_scenario_that_does_not_fit_n_is_one_line(groups: list[object], message: str):
    with pytest.raises(ScenarioError, match=f"^{message}$"):
        profiles(parse_scenario({"groups": groups}), 10)


def test_a_file_that_is_missing_or_not_toml_is_one_line(tmp_path: Path):
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "nope.toml")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(write(tmp_path, "seed = = 1"))


def test_flags_change_one_participant_or_every_one_and_win_over_the_file():
    found = profiles(parse_scenario({"default": {"dropout": 0.1}}), 4)
    found = with_flag(found, "--dropout", ["0.2", "3:0.5"])
    found = with_flag(found, "--slow", ["1:10"])
    found = with_flag(found, "--delay", ["0.25"])
    assert [p.dropout for p in found] == [0.2, 0.2, 0.2, 0.5]
    assert [p.slowdown for p in found] == [1.0, 10.0, 1.0, 1.0]
    assert [p.delay_seconds for p in found] == [0.25] * 4
    assert heterogeneous(found)
    assert not heterogeneous(profiles(Scenario(), 4))
    assert describe(found)[0] == "default: p0, p2 (slowdown 1, dropout 0.2, delay 0.25s)"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--dropout", "1", "need 0 <= INDEX < 4, NUMBER >= 0 and NUMBER < 1"),
        ("--dropout", "4:0.1", "need 0 <= INDEX < 4"),
        ("--slow", "0:0.5", "NUMBER >= 1"),
        ("--delay", "x:1", "expected INDEX:NUMBER"),
        ("--delay", "nan", "need 0 <= INDEX"),
    ],
)
def test_a_bad_flag_value_is_one_line(flag: str, value: str, message: str):
    with pytest.raises(ScenarioError, match=message):
        with_flag(tuple(ParticipantProfile(i) for i in range(4)), flag, [value])


def test_the_dropout_draw_is_keyed_by_seed_participant_and_version():
    draws = [drops_out(7, "p3", v, 0.1) for v in range(20_000)]
    assert draws == [drops_out(7, "p3", v, 0.1) for v in range(20_000)]  # reproducible
    assert 0.09 < sum(draws) / len(draws) < 0.11  # fixed seeds: this never changes
    assert draws != [drops_out(8, "p3", v, 0.1) for v in range(20_000)]
    assert draws != [drops_out(7, "p4", v, 0.1) for v in range(20_000)]
    assert not any(drops_out(7, "p3", v, 0.0) for v in range(1000))
    assert all(drops_out(7, "p3", v, 1.0) for v in range(1000))


def test_simulate_refuses_a_bad_scenario_in_one_line(tmp_path: Path):
    bad = write(tmp_path, "[[groups]]\nindices = [12]\nslowdown = 2\n")
    done = run_fedq(
        "simulate",
        "--app",
        "fedq.apps.synthetic:app",
        "-n",
        "4",
        "--scenario",
        str(bad),
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert done.returncode == 2
    assert done.stderr.strip().endswith("group 0: index 12 but there are 4 participants")
    missing = run_fedq("simulate", "-n", "4", "--scenario", str(tmp_path / "none.toml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert "Traceback" not in done.stderr + missing.stderr


def test_a_simulation_that_dropout_would_stall_is_refused_with_what_to_do(tmp_path):
    """With dropout and --min-quorum = K, a version short of a dropped update would extend
    its deadline forever: the run is refused at once, saying which flag to give."""
    stalled = run_fedq(
        "simulate", "-n", "4", "-r", "3", "--dropout", "0.5",
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    assert stalled.returncode == 2, stalled.stdout
    assert "--min-quorum below K (e.g. --min-quorum 3)" in stalled.stderr
    assert "Traceback" not in stalled.stderr
    assert not (tmp_path / "state").exists()  # refused before anything started
