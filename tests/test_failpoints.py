"""FEDQ_FAILPOINT's spelling (runtime/failpoints.py): a point, the hits that fire, the action."""

from __future__ import annotations

import signal

import pytest

from fedq.runtime.failpoints import _armed


def test_a_point_fires_at_its_first_hit_by_sigkill_unless_told_otherwise():
    assert _armed(None) is None and _armed("") is None
    assert _armed("after_checkpoint") == ("after_checkpoint", frozenset({1}), signal.SIGKILL)
    assert _armed("collecting:3") == ("collecting", frozenset({3}), signal.SIGKILL)


def test_a_point_can_stop_the_process_at_several_hits():
    assert _armed("after_ledger_commit:2,5,8:stop") == (
        "after_ledger_commit",
        frozenset({2, 5, 8}),
        signal.SIGSTOP,
    )


@pytest.mark.parametrize(
    ("spec", "says"),
    [("nowhere", "no such failpoint"), ("collecting:1:pause", "no such action")],
)
def test_a_misspelt_failpoint_is_refused_naming_what_exists(spec, says):
    with pytest.raises(ValueError, match=says):
        _armed(spec)
