"""What a coordinator finds wrong on its own disk is one line, found before anything
touches the broker (issue 22, findings 1, 2, 3, 4 and 9): a state dir in use, unwritable,
of another federation or another app, a damaged ledger or checkpoint, a report that
cannot be written; SIGTERM ends a process with 143; no progress bar in a file."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.service import Coordinator
from fedq.coordinator.state_dir import SIGNATURE_KEY, StateDirInUse, StateDirLock
from fedq.management import ManagementClient, default_management_url
from fedq.messages.memory import MemoryBroker, MemoryTransport
from fedq.messages.topology import Topology
from tests.conftest import BROKER_URL
from tests.helpers import COORDINATOR_CONSUMERS, run_fedq, start_fedq, until_consumers
from tests.test_cli import one_line_error

pytestmark = [pytest.mark.broker, pytest.mark.processes, pytest.mark.keras]

DENSE = "fedq.apps.dense:app"
SYNTHETIC = "fedq.apps.synthetic:app"


@pytest.fixture(scope="module")
def dense_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a federation of the dense app with one committed version (v0, v1)."""
    root = tmp_path_factory.mktemp("dense")
    run = run_fedq(
        "simulate", "--app", DENSE, "-n", "2", "--rounds", "1", "--federation", "dense",
        "--state-dir", str(root),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return root / "dense"


def copy_state(source: Path, root: Path, federation: str, *, claim: bool = True) -> Path:
    """``source`` copied to ``root/federation``; ``claim``: its ledger says it is
    ``federation``'s (as if that federation had made it)."""
    folder = root / federation
    shutil.copytree(source, folder)
    if claim:
        ledger = UpdateLedger(folder / "ledger.sqlite")
        ledger.set_meta("federation", federation)
        ledger.close()
    return folder


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def damage_ledger(folder: Path, where: str) -> None:
    """Overwrite the ledger's header (not a database any more) or its pages (corrupt)."""
    path = folder / "ledger.sqlite"
    data = bytearray(path.read_bytes())
    start, end = (0, 100) if where == "header" else (4096 + 100, len(data) - 100)
    data[start:end] = b"\x55" * (end - start)
    path.write_bytes(bytes(data))


def forget_signature(folder: Path) -> None:
    """As a ledger of a fedq that did not record the model's signature."""
    import sqlite3

    db = sqlite3.connect(folder / "ledger.sqlite")
    db.execute("DELETE FROM meta WHERE key = ?", (SIGNATURE_KEY,))
    db.commit()
    db.close()


async def declared(federation: str) -> list[str]:
    """Every queue and exchange of ``federation`` on the broker, by the management API."""
    prefix = f"fedq.{federation}."
    async with ManagementClient(default_management_url(BROKER_URL), BROKER_URL) as api:
        names = [q.name for q in await api.queues()] + await api.exchanges()
    return sorted(n for n in names if n.startswith(prefix))


def coordinator_args(federation: str, root: Path, app: str) -> list[str]:
    return [
        "coordinator", "--federation", federation, "--app", app, "--state-dir", str(root),
        "--broker", BROKER_URL, "--participants", "2", "--rounds", "2",
    ]  # fmt: skip


Prepare = Callable[[Path, Path, str], tuple[str, str]]


def other_federation(dense: Path, root: Path, federation: str) -> tuple[str, str]:
    copy_state(dense, root, federation, claim=False)
    return SYNTHETIC, "belongs to federation 'dense'; use another --state-dir"


def other_app(dense: Path, root: Path, federation: str) -> tuple[str, str]:
    copy_state(dense, root, federation)
    return SYNTHETIC, "holds another app's model (its tensors are 4"


def other_app_older_ledger(dense: Path, root: Path, federation: str) -> tuple[str, str]:
    forget_signature(copy_state(dense, root, federation))
    return SYNTHETIC, "holds another app's model"


def truncated_checkpoint(dense: Path, root: Path, federation: str) -> tuple[str, str]:
    truncate(copy_state(dense, root, federation) / "models" / "model-v000001.npz")
    return DENSE, "model-v000001.npz cannot be read (BadZipFile"


def damaged_ledger(dense: Path, root: Path, federation: str) -> tuple[str, str]:
    damage_ledger(copy_state(dense, root, federation), "header")
    return SYNTHETIC, "ledger.sqlite is damaged (file is not a database): restore it"


def unwritable(dense: Path, root: Path, federation: str) -> tuple[str, str]:
    root.rmdir()
    root.write_text("a file, not a folder\n")  # root runs the tests: chmod would not stop it
    return SYNTHETIC, "is not writable (Not a directory): pass a --state-dir"


REFUSALS: list[Prepare] = [
    other_federation,
    other_app,
    other_app_older_ledger,
    truncated_checkpoint,
    damaged_ledger,
    unwritable,
]


@pytest.mark.parametrize("prepare", REFUSALS, ids=lambda p: p.__name__)
def test_a_coordinator_refused_for_its_state_dir_says_one_line_and_declares_nothing(
    tmp_path: Path, federation: str, dense_state: Path, prepare: Prepare
) -> None:
    """Findings 2, 3 and 4: each is one line saying what to do, and the broker has no
    queue or exchange of the federation afterwards (the coordinator never declared one)."""
    root = tmp_path / "state"
    root.mkdir()
    app, says = prepare(dense_state, root, federation)
    result = run_fedq(*coordinator_args(federation, root, app), timeout=90)
    assert says in one_line_error(result)
    assert asyncio.run(declared(federation)) == []


def test_a_second_coordinator_on_a_state_dir_exits_at_once_and_sigterm_is_143(
    tmp_path: Path, federation: str
) -> None:
    """Finding 1: the second coordinator on a state dir is refused, naming the first's pid,
    before it touches the broker. The lock dies with its holder, even by SIGKILL: the
    next coordinator starts. Finding 9: SIGTERM ends a coordinator with 143, not 130."""
    args = coordinator_args(federation, tmp_path, SYNTHETIC)
    topology = Topology(federation)

    def consumers(count: int) -> None:
        until_consumers(BROKER_URL, topology.updates, count, within=120)

    first = start_fedq(*args, log=tmp_path / "first.log")
    third = None
    try:
        consumers(COORDINATOR_CONSUMERS)
        second = run_fedq(*args, timeout=60)
        line = one_line_error(second)
        state = tmp_path / federation
        assert f"state dir {state} is in use by another coordinator (pid {first.pid})" in line
        consumers(COORDINATOR_CONSUMERS)  # the second never consumed
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
        consumers(0)  # the broker saw the first one go
        third = start_fedq(*args, log=tmp_path / "third.log")
        consumers(COORDINATOR_CONSUMERS)
        third.terminate()
        assert third.wait(timeout=30) == 143, (tmp_path / "third.log").read_text()
        assert "stopped by SIGTERM" in (tmp_path / "third.log").read_text()
    finally:
        for process in (first, third):
            if process is not None and process.poll() is None:
                process.kill()


def test_a_second_coordinator_on_another_state_dir_is_refused_by_the_broker_lock(
    tmp_path: Path, federation: str
) -> None:
    """Finding 1, across state dirs (another host, another volume): the state dir's lock
    cannot see the first coordinator, the federation's lock on the broker does. The second
    is refused with one line, as a standby too (a standby needs the active one's state
    dir), and never consumes; the first goes on."""
    topology = Topology(federation)
    first = start_fedq(
        *coordinator_args(federation, tmp_path / "a", SYNTHETIC), log=tmp_path / "first.log"
    )
    try:
        until_consumers(BROKER_URL, topology.updates, COORDINATOR_CONSUMERS, within=120)
        for extra in ([], ["--standby"]):
            second = run_fedq(
                *coordinator_args(federation, tmp_path / "b", SYNTHETIC), *extra, timeout=90
            )
            line = one_line_error(second)
            assert f"another coordinator runs federation {federation} on this broker" in line
            assert topology.lock in line
        until_consumers(BROKER_URL, topology.updates, COORDINATOR_CONSUMERS, within=10)
        assert first.poll() is None, (tmp_path / "first.log").read_text()
    finally:
        first.kill()
        first.wait(timeout=30)


async def test_two_coordinators_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    """The lock belongs to the open file, not the process: a second Coordinator on the
    same state dir is refused even in one process; once the first is done, one starts."""
    config = CoordinatorConfig(federation="f", participants=1, rounds=1, state_dir=tmp_path)
    broker = MemoryBroker()
    first = Coordinator(config, SyntheticApp(), MemoryTransport(broker))
    with pytest.raises(StateDirInUse, match=r"is in use by another coordinator \(pid \d+\)"):
        Coordinator(config, SyntheticApp(), MemoryTransport(broker))
    first.state.close()
    Coordinator(config, SyntheticApp(), MemoryTransport(broker)).state.close()


async def test_a_standby_waits_for_the_lock_and_takes_it_when_its_holder_is_killed(
    tmp_path: Path,
) -> None:
    """What a standby will use: :meth:`StateDirLock.wait` returns once the holder is
    gone, here a process killed with SIGKILL (the kernel drops its lock)."""
    code = (
        "import sys, pathlib, time; from fedq.coordinator.state_dir import StateDirLock; "
        "lock = StateDirLock(pathlib.Path(sys.argv[1])); lock.acquire(); "
        "print('held', flush=True); time.sleep(600)"
    )
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 60) == b"held\n"
        lock = StateDirLock(tmp_path)
        assert not lock.try_acquire()
        assert lock.holder() == holder.pid
        waiting = asyncio.create_task(lock.wait(interval=0.05))
        holder.kill()
        await asyncio.wait_for(waiting, 30)
        assert lock.held and lock.holder() != holder.pid
        lock.release()
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()


@pytest.mark.parametrize("where", ["header", "pages"])
def test_a_damaged_ledger_is_one_line_for_history_and_a_failed_audit(
    tmp_path: Path, dense_state: Path, where: str
) -> None:
    """Finding 2: ``fedq history`` says what is wrong and what to do (exit 2); ``fedq
    audit`` reports a failed audit (exit 1), one line, no traceback."""
    folder = copy_state(dense_state, tmp_path, "f")
    damage_ledger(folder, where)
    says = "file is not a database" if where == "header" else "database disk image is malformed"
    line = one_line_error(run_fedq("history", "--state-dir", str(tmp_path)))
    assert f"ledger.sqlite is damaged ({says}): restore it from a backup" in line
    audit = run_fedq("audit", "--state-dir", str(tmp_path))
    assert audit.returncode == 1 and "Traceback" not in audit.stderr, audit.stderr
    lines = [x for x in audit.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and f"{folder}: FAILED" in lines[0] and says in lines[0], lines


def test_a_truncated_checkpoint_is_one_line_for_export(tmp_path: Path, dense_state: Path) -> None:
    folder = copy_state(dense_state, tmp_path, "f")
    truncate(folder / "models" / "model-v000001.npz")
    result = run_fedq(
        "export", "--app", DENSE, "--state-dir", str(folder), "--out", str(tmp_path / "m.keras")
    )
    line = one_line_error(result)
    assert "model-v000001.npz cannot be read (BadZipFile" in line and "fedq audit" in line
    assert "--from-last-good" in line


@pytest.mark.parametrize("kind", ["under a file", "a folder"])
def test_an_unwritable_report_is_refused_before_the_run(tmp_path: Path, kind: str) -> None:
    """Finding 2: the report's path is checked before the run, not after it."""
    report = tmp_path / "file" / "report.json" if kind == "under a file" else tmp_path
    (tmp_path / "file").write_text("not a folder\n")
    result = run_fedq(
        "simulate", "--app", SYNTHETIC, "-n", "2", "--rounds", "1", "--federation", "f",
        "--state-dir", str(tmp_path / "state"), "--report", str(report),
    )  # fmt: skip
    line = one_line_error(result)
    assert f"--report {report} cannot be written" in line
    assert not (tmp_path / "state").exists()  # nothing ran


def test_an_unwritable_state_dir_is_one_line_for_simulate(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder\n")
    result = run_fedq(
        "simulate", "--app", SYNTHETIC, "-n", "2", "--rounds", "1", "--federation", "f",
        "--state-dir", str(tmp_path / "file"),
    )  # fmt: skip
    assert f"state dir {tmp_path / 'file' / 'f'} is not writable" in one_line_error(result)


def test_output_to_a_file_has_plain_lines_and_no_progress_bar(tmp_path: Path) -> None:
    """Finding 9: not on a terminal, no bar (a bar redrawn into a file leaves cut-off
    lines): a plain line per opened and committed version instead."""
    result = run_fedq(
        "simulate", "--app", SYNTHETIC, "-n", "2", "--rounds", "2", "--federation", "f",
        "--state-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stderr
    assert "\u2501" not in out and "\r" not in out and "\x1b" not in out, out
    assert "round 1 (model v0): collecting 2 updates" in out
    assert "round 2 (model v1): collecting 2 updates" in out
    assert "round 2: model v2 from 2 updates" in out
