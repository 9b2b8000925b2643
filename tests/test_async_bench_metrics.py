"""bench/async_vs_sync.py's measures of a run, on curves made by hand (the bench itself
is run by hand: it trains for minutes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from async_vs_sync import WINDOW, Run, curve_on


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
    back = Run.from_record(json.loads(json.dumps(r.record(0.7))))
    assert back == r
    names = {
        Run(arm, scheme, seed, budget).file_name
        for arm in ("sync", "async")
        for scheme in ("dirichlet:0.5", "labels:2")
        for seed in (0, 1)
        for budget in (45.0, 900.0)
    }
    assert len(names) == 16 and all(":" not in n for n in names)
