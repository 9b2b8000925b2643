"""bench/async_vs_sync.py's measures of a run, on curves made by hand (the bench itself
is run by hand: it trains for minutes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from async_vs_sync import HARNESS, WINDOW, Run, curve_on, reusable, summarise


def run(curve: list[tuple[float, float]], contributors: list[list[str]] | None = None) -> Run:
    return Run("async", "dirichlet:0.5", 0, 60.0, curve, contributors or [])


def test_time_to_target_accuracy_at_budget_and_best():
    r = run([(1.0, 0.5), (2.0, 0.72), (3.0, 0.6), (4.0, 0.8), (5.0, 0.75)])
    assert r.seconds_to(0.7) == 2.0 and r.seconds_to(0.9) is None
    assert r.at_budget == 0.75 and r.best == 0.8


def test_the_largest_drop_is_the_deepest_fall_below_the_best_after_the_target():
    # Reached at 2 s (72%); falls to 60 (12 points), climbs to 80, falls to 75 (5 points).
    r = run([(1.0, 0.5), (2.0, 0.72), (3.0, 0.6), (4.0, 0.8), (5.0, 0.75)])
    assert r.drop_after(0.7) == pytest.approx(12.0)
    assert run([(1.0, 0.5), (2.0, 0.4)]).drop_after(0.7) is None  # never reached
    # A fall before the target was reached does not count.
    assert run([(1.0, 0.6), (2.0, 0.1), (3.0, 0.7), (4.0, 0.69)]).drop_after(0.7) == pytest.approx(
        1.0
    )


def test_shares_are_per_window_of_versions_and_a_participant_left_out_has_zero():
    everyone = [[f"p{(v + i) % 10}" for i in range(5)] for v in range(WINDOW)]
    r = run([(float(v), 0.5) for v in range(WINDOW)], everyone)
    (window,) = r.shares()
    assert sum(window.values()) == pytest.approx(1.0)
    assert window["p0"] == pytest.approx(5 / 50)
    assert r.smallest_share() == pytest.approx(0.1)
    without_p0 = [[p for p in version if p != "p0"] or ["p1"] for version in everyone]
    assert run([(float(v), 0.5) for v in range(WINDOW)], without_p0).smallest_share() == 0.0
    # Fewer versions than a window: no full window to judge.
    assert run([(1.0, 0.5)], [["p1"]]).smallest_share() is None


def test_a_curve_on_a_grid_is_the_last_version_committed_by_then():
    r = run([(1.0, 0.5), (3.0, 0.7)])
    out = curve_on(r, np.array([0.0, 1.0, 2.0, 3.5]))
    assert np.isnan(out[0])
    np.testing.assert_allclose(out[1:], [0.5, 0.5, 0.7])


def test_a_run_kept_in_its_file_reads_back_as_measured_and_parts_do_not_share_a_file():
    r = run([(1.0, 0.5), (2.0, 0.72)], [["p0", "p3"], ["p1"]])
    for kept in (r.measurement(), r.record(0.7)):
        assert Run.from_record(json.loads(json.dumps(kept))) == r
    # A run's file keeps no figure read at a target: the target is the report's.
    assert "seconds_to_target" not in r.measurement()
    names = {
        Run(arm, scheme, seed, budget).file_name
        for arm in ("sync", "async")
        for scheme in ("dirichlet:0.5", "labels:2")
        for seed in (0, 1)
        for budget in (45.0, 900.0)
    }
    assert len(names) == 16 and all(":" not in n for n in names)


def kept(cpu: str | None, images: int = 10_000, harness: int = HARNESS) -> dict[str, object]:
    return {"eval_images": images, "cpu": cpu, "date": "then", "harness": harness}


def test_a_seed_is_read_back_only_when_all_its_arms_were_timed_on_one_cpu():
    asked = {"sync", "async"}
    there, here = "EPYC model 17", "EPYC model 1"
    # All asked for, on one CPU (not this one): all read, since they compare with each other.
    both_there = {"sync": kept(there), "async": kept(there)}
    assert reusable(both_there, asked, 10_000, here) == both_there
    # One missing: the seed is timed here, so the one kept on another CPU is measured too.
    assert reusable({"sync": kept(there)}, asked, 10_000, here) == {}
    # Split over two CPUs: only the one timed here is read.
    split = {"sync": kept(there), "async": kept(here)}
    assert reusable(split, asked, 10_000, here) == {"async": kept(here)}
    # No CPU recorded, or other test images: measured again.
    assert reusable({"sync": kept(None), "async": kept(None)}, asked, 10_000, here) == {}
    other_images = {"sync": kept(here, 2000), "async": kept(here)}
    assert reusable(other_images, asked, 10_000, here) == {"async": kept(here)}
    # Measured by the older harness (evaluating within the wall time): measured again.
    older = {"sync": kept(there), "async": kept(there)}
    del older["sync"]["harness"]
    assert reusable(older, asked, 10_000, here) == {}


def test_speed_up_and_points_are_taken_against_the_sync_run_of_the_same_seed():
    def timed(arm: str, seed: int, reached: float, end: float) -> Run:
        return Run(arm, "dirichlet:0.5", seed, 900.0, [(reached, 0.7), (900.0, end)])

    # Seed 0 on a machine twice as fast as seed 1's: per seed, async is 2x and 4x sooner.
    runs = [
        timed("sync", 0, 40.0, 0.88),
        timed("async", 0, 20.0, 0.86),
        timed("sync", 1, 80.0, 0.80),
        timed("async", 1, 20.0, 0.81),
    ]
    row = next(r for r in summarise(runs, 0.7) if r["arm"] == "async")
    assert row["speedup_vs_sync"] == pytest.approx(3.0)  # (2 + 4) / 2; the means give 3.0 too
    assert row["points_vs_sync"] == pytest.approx((-2.0 + 1.0) / 2)
    runs[3] = timed("async", 1, 10.0, 0.81)  # 8x: mean of ratios 5.0, ratio of means 4.0
    row = next(r for r in summarise(runs, 0.7) if r["arm"] == "async")
    assert row["speedup_vs_sync"] == pytest.approx(5.0)


def test_each_partition_is_read_at_its_own_target_unless_one_is_chosen():
    # The same curve on both partitions: 45% at 1 s, 70% at 2 s.
    curve = [(1.0, 0.5), (2.0, 0.72)]
    runs = [Run("sync", scheme, 0, 60.0, curve) for scheme in ("dirichlet:0.5", "labels:2")]
    own = {row["scheme"]: row["seconds_to_target"] for row in summarise(runs, None)}
    assert own == {"dirichlet:0.5": 2.0, "labels:2": 1.0}
    chosen = {row["scheme"]: row["seconds_to_target"] for row in summarise(runs, 0.7)}
    assert chosen == {"dirichlet:0.5": 2.0, "labels:2": 2.0}
