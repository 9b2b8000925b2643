"""A version that can never close is said while the federation runs (issue 22): a
coordinator that needs 3 updates, with 2 participants alive and no lower --min-quorum,
says so in one line and in its metrics; a third participant resolves it and the version
commits. Real coordinator and participant processes on RabbitMQ."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from fedq.coordinator.modes import OpenVersion
from fedq.coordinator.records import UpdateRecord
from fedq.coordinator.stall import Stall, StallWatch, stall_of
from tests.conftest import BROKER_URL
from tests.helpers import (
    free_port,
    metric_total,
    start_fedq,
    until,
    until_line,
)

SYNTHETIC = "fedq.apps.synthetic:app"
STALLED = "version 1 cannot close: it needs 3 updates and 2 participants are alive"


@pytest.mark.broker
@pytest.mark.processes
def test_a_version_short_of_participants_is_said_then_resolved(
    tmp_path: Path, federation: str
) -> None:
    port, page = free_port(), free_port()
    board = start_fedq(
        "dashboard", "--state-dir", str(tmp_path), "--broker", BROKER_URL, "--port", str(page),
        log=tmp_path / "dashboard.log",
    )  # fmt: skip
    log = tmp_path / "coordinator.log"
    coordinator = start_fedq(
        "coordinator", "--federation", federation, "--app", SYNTHETIC,
        "--state-dir", str(tmp_path), "--broker", BROKER_URL,
        "--participants", "3", "--rounds", "1", "--metrics-port", str(port),
        log=log,
    )  # fmt: skip
    participants: list[subprocess.Popen[bytes]] = []

    def participant(i: int) -> None:
        args = [
            "participant", "--federation", federation, "--app", SYNTHETIC,
            "--id", f"p{i}", "--partition", f"{i}/3", "--broker", BROKER_URL,
        ]  # fmt: skip
        participants.append(start_fedq(*args, log=tmp_path / f"p{i}.log"))

    missing = "fedq_version_cannot_close_missing_updates"
    metrics = f"http://127.0.0.1:{port}/metrics"

    def shown() -> str | None:
        """What the dashboard's card of the federation says of it ("" before it has one)."""
        try:
            cards = httpx.get(f"http://127.0.0.1:{page}/api/state", timeout=5).json()
        except httpx.TransportError:
            return ""
        card = [c for c in cards["federations"] if c["name"] == federation]
        return card[0]["cannot_close"] if card else ""

    try:
        until_line(log, "collecting", coordinator)  # consuming by then
        participant(0)
        participant(1)
        text = until_line(log, STALLED, coordinator)
        assert "(2 updates in, 0 participants yet to send)" in text, text
        assert "start another participant, or set --min-quorum below 3" in text
        assert until(lambda: metric_total(metrics, missing), lambda v: v == 1, what=missing)
        on_page = until(shown, lambda s: bool(s), what="the stall on the dashboard")
        assert on_page is not None and on_page.startswith(STALLED)
        participant(2)
        until_line(log, "version 1 can close now", coordinator)
        until(shown, lambda s: s is None, what="the stall gone from the dashboard")
        assert coordinator.wait(timeout=120) == 0, log.read_text()
        out = log.read_text()
        assert "round 1: model v1 from 3 updates" in out
        # Said again only when its numbers change: once with both participants in (and,
        # on a slow machine, before with fewer alive), never repeated while it waits.
        said = [line for line in out.splitlines() if "cannot close" in line]
        assert len(said) == len(set(said)) and out.count(STALLED) == 1, out
        for process in participants:
            assert process.wait(timeout=60) == 0
    finally:
        for process in (coordinator, *participants, board):
            if process.poll() is None:
                process.kill()


def record(participant: str, staleness: int = 0) -> UpdateRecord:
    return UpdateRecord(
        update_id=participant,
        participant=participant,
        round=4 - staleness,
        base_version=3 - staleness,
        num_examples=1,
        weight=1.0,
        staleness=staleness,
    )


def test_what_can_still_close_is_no_stall() -> None:
    """Updates already in count; so do live participants yet to send; not a late one."""
    window = OpenVersion(3, 4, quorum=3, min_quorum=3, deadline_seconds=60, late_counts=False)
    assert stall_of(window, {"a", "b", "c"}, 3) is None
    window.records.append(record("a"))
    assert stall_of(window, {"b", "c"}, 2) is None  # a sent, then went: b and c may
    window.records.append(record("b", staleness=1))  # late: b may still send a fresh one
    assert stall_of(window, {"b"}, 1) == Stall(4, 3, 1, 1, 1)
    window.min_quorum = 2
    assert stall_of(window, {"b"}, 1) is None  # closes at its deadline with a and b


def test_the_watch_waits_its_grace_then_says_changes_and_the_end() -> None:
    said: list[tuple[int, Stall | None]] = []
    alive: list[set[str]] = [{"a"}]
    watch = StallWatch(lambda: (alive[0], len(alive[0])), lambda v, s: said.append((v, s)))
    window = OpenVersion(0, 1, quorum=3, min_quorum=3, deadline_seconds=60)
    watch.check(window, now=0.0)
    watch.check(window, now=1.0)
    assert said == []  # within the grace
    watch.check(window, now=10.0)
    assert said == [(1, Stall(1, 3, 0, 1, 1))]
    watch.check(window, now=11.0)
    assert len(said) == 1  # nothing changed
    alive[0] = {"a", "b"}
    watch.check(window, now=11.5)
    assert len(said) == 1  # not looked again within a second of the last look
    watch.check(window, now=12.0)
    assert said[-1] == (1, Stall(1, 3, 0, 2, 2))
    alive[0] = {"a", "b", "c"}
    watch.check(window, now=13.0)
    assert said[-1][1] is None and len(said) == 3
