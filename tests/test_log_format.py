"""``--log-format json`` (issue 22, logs): every line a long-running command writes is one
JSON object with the fields a log pipeline keys on, and each committed version is an
event with its number; real coordinator and participant processes on RabbitMQ, and a
``fedq simulate``."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fedq.messages.amqp import AmqpTransport
from fedq.messages.topology import Topology
from tests.conftest import BROKER_URL
from tests.helpers import run_fedq, start_fedq, until_line

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
        asyncio.run(teardown(federation))


async def teardown(federation: str) -> None:
    async with AmqpTransport(BROKER_URL) as transport:
        await Topology(federation).delete(transport, ["p0", "p1"])
