"""``fedq.simulate``: the Python API, from a plain script and from a running event loop (a
notebook), on the embedded broker and on RabbitMQ; its history is ``fedq history --json``'s;
an unknown keyword is one error before anything runs. ``fedq.run_coordinator`` and
``fedq.run_participant``: one role each on RabbitMQ, as tasks of one loop or as plain
calls, their settings checked before the broker is reached."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import fedq
from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.records import VersionSummary
from fedq.teardown import teardown
from tests.broker_hygiene import clear_federation
from tests.broker_users import MANAGEMENT_URL
from tests.conftest import BROKER_URL
from tests.helpers import fedq_env, python_snippets, run_fedq, run_snippet

pytestmark = [pytest.mark.broker, pytest.mark.processes, pytest.mark.keras]

BROKERS = {"embedded": None, "rabbitmq": BROKER_URL}

SCRIPT = """
import json, sys
import fedq

result = fedq.simulate(
    app="fedq.apps.dense:app", participants=3, rounds=3,
    broker_url=sys.argv[1] or None, federation=sys.argv[2], state_dir=sys.argv[3],
)
print(json.dumps({
    "final_metrics": result.final_metrics,
    "history": result.history,
    "state_dir": result.state_dir,
}))
"""


def history_json(state_dir: str) -> list[dict[str, Any]]:
    """What ``fedq history --json`` prints of one federation's folder: its rounds."""
    out = run_fedq("history", "--state-dir", state_dir, "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    rounds: list[dict[str, Any]] = json.loads(out.stdout)["rounds"]
    return rounds


def check_result(history: list[dict[str, Any]], final: dict[str, float], state_dir: str) -> None:
    """Done-when 2: three records, one per version, the accuracy in the final metrics,
    and the history equal to what ``fedq history --json`` reads from the state dir."""
    assert [h["version"] for h in history] == [1, 2, 3]
    assert 0.0 <= final["accuracy"] <= 1.0
    assert final == history[-1]["metrics"]
    assert json.loads(json.dumps(history)) == history_json(state_dir)


@pytest.mark.keras
@pytest.mark.parametrize("on", sorted(BROKERS))
def test_simulate_from_a_plain_script(on, federation, tmp_path):
    broker = BROKERS[on] or ""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, broker, federation, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=fedq_env(),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["state_dir"] == str(tmp_path / federation)
    check_result(result["history"], result["final_metrics"], result["state_dir"])


class Seen(CoordinatorObserver):
    """Which thread and which loop the coordinator's observers are called on."""

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.versions: list[int] = []

    def version_committed(self, summary: VersionSummary) -> None:
        self.threads.add(threading.get_ident())
        self.versions.append(summary.version)


@pytest.mark.keras
@pytest.mark.parametrize("on", sorted(BROKERS))
async def test_simulate_from_inside_a_running_event_loop(on, federation, tmp_path):
    """A notebook cell runs with the kernel's loop running: ``asyncio.run`` would refuse."""
    asyncio.get_running_loop()  # the premise: this test's loop runs in this thread
    seen = Seen()
    result = fedq.simulate(
        app="fedq.apps.dense:app",
        participants=3,
        rounds=3,
        broker_url=BROKERS[on],
        federation=federation,
        state_dir=tmp_path,
        observers=[seen],
    )
    check_result(result.history, result.final_metrics, result.state_dir)
    assert seen.versions == [1, 2, 3]
    assert threading.get_ident() not in seen.threads  # ran on a loop of its own


@pytest.mark.broker
async def test_simulate_async_keeps_the_callers_loop_running(federation, tmp_path):
    """``await fedq.simulate_async``: the federation runs on the caller's loop, which
    keeps serving its other tasks meanwhile; an App object works as well as a name."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)  # sleep-ok: a tick of the loop's other task, counted

    other = asyncio.create_task(ticker())
    result = await fedq.simulate_async(
        app=SyntheticApp(params=8),
        participants=3,
        rounds=2,
        broker_url=BROKER_URL,
        federation=federation,
        state_dir=tmp_path,
        quorum=2,
    )
    stop.set()
    await other
    assert ticks > 1
    assert [h["version"] for h in result.history] == [1, 2]
    assert all(h["n_updates"] == 2 for h in result.history)  # quorum=2 was applied


def test_an_unknown_setting_is_one_error_before_anything_runs(tmp_path):
    with pytest.raises(fedq.SettingsError) as caught:
        fedq.simulate(participants=2, rounds=1, state_dir=tmp_path, lerning_rate=0.1)
    message = str(caught.value)
    assert "'lerning_rate' (did you mean 'learning_rate'?)" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"quorum": 0}, "quorum: "),
        ({"update_codec": "zip"}, "unknown codec 'zip'"),
        ({"learning_rate": -1.0}, "learning rate -1.0"),
        ({"partition_scheme": "foo"}, "partition_scheme: "),
        ({"aggregator": "nope"}, "aggregator 'nope'"),
    ],
)
def test_a_bad_value_is_a_settings_error_naming_it(settings, says, tmp_path):
    with pytest.raises(fedq.SettingsError, match=says):
        fedq.simulate(app=SyntheticApp(params=8), participants=2, rounds=1, **settings)


def check_roles(result: fedq.FederationResult, stats: list[fedq.ParticipantStats]) -> None:
    """Two versions from two participants, each of which sent an update to each; the
    coordinator's history is the ledger's, as ``fedq history --json`` reads it."""
    assert [h["version"] for h in result.history] == [1, 2]
    assert sorted(s.participant for s in stats) == ["p0", "p1"]
    assert all(s.rounds_trained == 2 and s.updates_sent == 2 for s in stats)
    assert json.loads(json.dumps(result.history)) == history_json(result.state_dir)


@pytest.mark.broker
async def test_a_coordinator_and_participants_run_as_tasks_of_one_loop(federation, tmp_path):
    app = SyntheticApp(params=8)
    coordinator = asyncio.create_task(
        fedq.run_coordinator_async(
            app, federation, 2, 2, broker_url=BROKER_URL, state_dir=tmp_path, round_timeout=60
        )
    )
    participants = [
        fedq.run_participant_async(
            app, federation, f"p{i}", broker_url=BROKER_URL, partition=f"{i}/2", epochs=1
        )
        for i in range(2)
    ]
    try:
        stats = await asyncio.gather(*participants)
        result = await coordinator
    finally:
        coordinator.cancel()
        await teardown(federation, BROKER_URL, MANAGEMENT_URL, force=True)
    assert result.state_dir == str(tmp_path / federation)
    check_roles(result, stats)


@pytest.mark.broker
def test_the_plain_calls_run_each_role_where_no_loop_runs(federation, tmp_path):
    """A script's calls: the coordinator here, each participant in a thread of its own."""
    app = SyntheticApp(params=8)
    with ThreadPoolExecutor(2) as pool:
        running = [
            pool.submit(
                fedq.run_participant,
                app,
                federation,
                f"p{i}",
                broker_url=BROKER_URL,
                partition=f"{i}/2",
            )
            for i in range(2)
        ]
        try:
            result = fedq.run_coordinator(
                app, federation, 2, 2, broker_url=BROKER_URL, state_dir=tmp_path
            )
            stats = [r.result(timeout=120) for r in running]
        finally:
            asyncio.run(teardown(federation, BROKER_URL, MANAGEMENT_URL, force=True))
    check_roles(result, stats)


NOWHERE = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens: a connection would fail


@pytest.mark.parametrize(
    ("role", "settings", "says"),
    [
        ("coordinator", {"quorum": 0}, "quorum: "),
        ("coordinator", {"aggregator": "nope"}, "aggregator 'nope'"),
        ("coordinator", {"mlflow_experiment": ""}, "mlflow_experiment: "),
        (
            "coordinator",
            {"quorom": 2},
            "fedq.run_coordinator: unknown setting 'quorom' (did you mean 'quorum'?)",
        ),
        ("participant", {"epoch": 2}, "unknown setting 'epoch' (did you mean 'epochs'?)"),
        ("participant", {"update_codec": "zip"}, "unknown codec 'zip'"),
        ("participant", {"learning_rate": -1.0}, "learning rate -1.0"),
        ("participant", {"partition": "3/2"}, "partition: "),
    ],
)
def test_a_roles_bad_setting_is_a_settings_error_before_the_broker(role, settings, says, tmp_path):
    app = SyntheticApp(params=8)
    with pytest.raises(fedq.SettingsError, match=re.escape(says)) as caught:
        if role == "coordinator":
            fedq.run_coordinator(app, "f", 2, 1, broker_url=NOWHERE, state_dir=tmp_path, **settings)
        else:
            fedq.run_participant(app, "f", "p0", broker_url=NOWHERE, **settings)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_the_plain_calls_share_their_coroutines_signatures():
    pairs: list[tuple[Callable[..., Any], Callable[..., Any]]] = [
        (fedq.simulate, fedq.simulate_async),
        (fedq.run_coordinator, fedq.run_coordinator_async),
        (fedq.run_participant, fedq.run_participant_async),
    ]
    for plain, awaited in pairs:
        assert inspect.signature(plain) == inspect.signature(awaited)
        assert not inspect.iscoroutinefunction(plain)


DOC = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"


def test_the_doc_has_snippets():
    assert len(python_snippets(DOC)) >= 3


@pytest.mark.keras
@pytest.mark.parametrize(
    "index",
    [
        pytest.param(i, marks=[pytest.mark.broker] * ("amqp://" in snippet))
        for i, snippet in enumerate(python_snippets(DOC))
    ],
)
def test_every_snippet_of_the_python_api_doc_runs(index, tmp_path):
    """Each block as a user pastes it: a script, or a notebook cell if it awaits."""
    snippet = python_snippets(DOC)[index]
    try:
        out = run_snippet(snippet, tmp_path)
    finally:
        if "amqp://" in snippet:  # its federations, named by their state dirs, go
            for federation in (tmp_path / "state").glob("*"):
                clear_federation(federation.name, BROKER_URL)
    assert out.returncode == 0, out.stderr[-3000:]
