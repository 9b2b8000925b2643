"""FEDQ_FAILPOINT's spelling (runtime/failpoints.py): a point, the hits that fire, the action."""

from __future__ import annotations

import os
import signal

import pytest

from fedq.runtime import failpoints
from fedq.runtime.failpoints import Armed, _armed, failpoint


def test_a_point_fires_at_its_first_hit_by_sigkill_unless_told_otherwise():
    assert _armed(None) == {} and _armed("") == {}
    assert _armed("after_checkpoint") == {"after_checkpoint": Armed(frozenset({1}), signal.SIGKILL)}
    assert _armed("collecting:3") == {"collecting": Armed(frozenset({3}), signal.SIGKILL)}


def test_a_point_can_stop_the_process_at_several_hits():
    assert _armed("after_ledger_commit:2,5,8:stop") == {
        "after_ledger_commit": Armed(frozenset({2, 5, 8}), signal.SIGSTOP)
    }


def test_several_points_are_armed_at_once_each_with_its_own_hits():
    assert _armed("publishing_model:10:stop;after_ledger_commit:15:stop;training:2") == {
        "publishing_model": Armed(frozenset({10}), signal.SIGSTOP),
        "after_ledger_commit": Armed(frozenset({15}), signal.SIGSTOP),
        "training": Armed(frozenset({2}), signal.SIGKILL),
    }


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("nowhere", "no such failpoint"),
        ("collecting:1:pause", "no such action"),
        ("training:1;training:3", "training is armed twice"),
    ],
)
def test_a_misspelt_failpoint_is_refused_naming_what_exists(spec, says):
    with pytest.raises(ValueError, match=says):
        _armed(spec)


def test_each_armed_point_counts_its_own_hits(monkeypatch):
    """A hit of one point does not count toward another's: the signal comes at each point's
    own nth hit (os.kill is recorded here instead of sent)."""
    signals: list[tuple[str, int]] = []
    where = ""
    monkeypatch.setattr(failpoints, "_ARMED", _armed("collecting:2:stop;training:1"))
    monkeypatch.setattr(failpoints, "_hits", {})
    monkeypatch.setattr(os, "kill", lambda pid, sig: signals.append((where, sig)))
    for where in ("collecting", "training", "between_versions", "collecting", "collecting"):
        failpoint(where)
    assert signals == [("training", signal.SIGKILL), ("collecting", signal.SIGSTOP)]
