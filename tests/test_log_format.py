"""``--log-format json`` (issue 22, logs): every line a long-running command writes is one
JSON object with the fields a log pipeline keys on, and each committed version is an
event with its number; real coordinator and participant processes on RabbitMQ, and a
``fedq simulate``."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BROKER_URL
from tests.helpers import FEDQ, fedq_env, run_fedq, start_fedq, until_line

pytestmark = pytest.mark.processes
SYNTHETIC = "fedq.apps.synthetic:app"
#: What every line carries, whatever its event.
REQUIRED = {"timestamp", "level", "role", "pid", "event", "message"}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object with the required keys, its timestamp
    ISO-8601 in UTC, no control characters (no ANSI, no bar): else the test fails."""
    assert text.strip(), "nothing was written"
    assert "\x1b" not in text and "\r" not in text, text
    events = []
    for line in text.splitlines():
        event = json.loads(line)  # a line that is not JSON fails here, with itself
        assert isinstance(event, dict) and event.keys() >= REQUIRED, line
        stamp = datetime.fromisoformat(event["timestamp"])
        assert stamp.utcoffset() == timedelta(0), line
        events.append(event)
    return events


def committed(events: list[dict[str, Any]]) -> list[int]:
    return [e["version"] for e in events if e["event"] == "version_committed"]


@pytest.mark.broker
def test_simulate_writes_json_lines_with_each_commit_as_an_event(
    tmp_path: Path, federation: str
) -> None:
    result = run_fedq(
        "simulate", "--app", SYNTHETIC, "-n", "2", "--rounds", "3", "--federation", federation,
        "--state-dir", str(tmp_path), "--broker", BROKER_URL, "--log-format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stdout + result.stderr)
    assert committed(events) == [1, 2, 3]
    assert {e["role"] for e in events} == {"simulate"}
    assert all(e["federation"] == federation for e in events)
    done = [e for e in events if e["event"] == "federation_done"]
    assert len(done) == 1 and done[0]["updates_incorporated"] == 6


@pytest.mark.broker
def test_a_coordinator_and_participants_write_json_lines(tmp_path: Path, federation: str) -> None:
    """The coordinator is given the flag, the participants FEDQ_LOG_FORMAT."""
    coordinator_log, logs = tmp_path / "coordinator.log", []
    coordinator = start_fedq(
        "coordinator", "--federation", federation, "--app", SYNTHETIC,
        "--state-dir", str(tmp_path), "--broker", BROKER_URL,
        "--participants", "2", "--rounds", "3", "--log-format", "json",
        log=coordinator_log,
    )  # fmt: skip
    participants: list[subprocess.Popen[bytes]] = []
    try:
        until_line(coordinator_log, '"version_opened"', coordinator)  # consuming by then
        for i in range(2):
            logs.append(tmp_path / f"p{i}.log")
            args = [
                "participant", "--federation", federation, "--app", SYNTHETIC,
                "--id", f"p{i}", "--partition", f"{i}/2", "--broker", BROKER_URL,
            ]  # fmt: skip
            json_env = {"FEDQ_LOG_FORMAT": "json"}
            participants.append(start_fedq(*args, log=logs[-1], env=json_env))
        for process in (coordinator, *participants):
            assert process.wait(timeout=180) == 0, coordinator_log.read_text()
        events = json_lines(coordinator_log.read_text())
        assert committed(events) == [1, 2, 3]
        assert {e["role"] for e in events} == {"coordinator"}
        opened = [e["version"] for e in events if e["event"] == "version_opened"]
        assert opened == [1, 2, 3]
        for i, log in enumerate(logs):
            sent = json_lines(log.read_text())
            assert {e["role"] for e in sent} == {"participant"}
            done = [e for e in sent if e["event"] == "participant_done"]
            assert len(done) == 1 and done[0]["participant"] == f"p{i}", log.read_text()
            versions = [e["version"] for e in sent if e["event"] == "update_sent"]
            assert versions and all(e["participant"] == f"p{i}" for e in sent if "participant" in e)
    finally:
        for process in (coordinator, *participants):
            if process.poll() is None:
                process.kill()


def on_a_terminal(*args: str) -> str:
    """What ``fedq ARGS`` writes when its stdout and stderr are a terminal (a pty)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [*FEDQ, *args], stdout=follower, stderr=follower, env=fedq_env(), close_fds=True
    )
    os.close(follower)
    out = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed its side
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert process.wait(timeout=120) == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def test_plain_is_plain_lines_even_on_a_terminal(tmp_path: Path) -> None:
    """``auto`` draws bars and colours on a terminal; ``plain`` never does."""
    args = ["simulate", "--app", SYNTHETIC, "-n", "2", "--rounds", "2", "--state-dir"]
    drawn = on_a_terminal(*args, str(tmp_path / "auto"))
    assert "\x1b" in drawn  # the control: a terminal it is
    plain = on_a_terminal(*args, str(tmp_path / "plain"), "--log-format", "plain")
    assert "\x1b" not in plain and "\u2501" not in plain, plain
    assert "round 2 (model v1): collecting 2 updates" in plain
    assert "round 2: model v2 from 2 updates" in plain
