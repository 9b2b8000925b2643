"""``--from-last-good`` (issue 22, finding 2): a finished federation's last checkpoint cut
short is one line naming the flag; with it, the coordinator goes on from the last good
version, the damaged files moved aside, never deleted; the final model is exact and
``fedq audit`` passes, every update the broker confirmed committed or refused
(``rolled_back``). Real coordinator and participant processes on RabbitMQ."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.audit import RESUME_HINT
from fedq.coordinator.audit import audit as audit_ledger
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.rollback import roll_back_to_last_good
from tests.conftest import BROKER_URL
from tests.helpers import run_fedq, start_fedq, until_line
from tests.test_cli import one_line_error
from tests.test_local_checks import truncate

pytestmark = pytest.mark.processes
SYNTHETIC = "fedq.apps.synthetic:app"
ROUNDS = 3


def federation_run(
    root: Path, federation: str, logs: Path, tag: str, *extra: str
) -> tuple[str, list[Path]]:
    """A coordinator (with ``extra`` flags) and two participants to the end; the
    coordinator's output and the participants' sent logs."""
    coordinator_log = logs / f"coordinator-{tag}.log"
    coordinator = start_fedq(
        "coordinator", "--federation", federation, "--app", SYNTHETIC,
        "--state-dir", str(root), "--broker", BROKER_URL,
        "--participants", "2", "--rounds", str(ROUNDS), *extra,
        log=coordinator_log,
    )  # fmt: skip
    participants: list[subprocess.Popen[bytes]] = []
    sent = [logs / f"sent-p{i}-{tag}.jsonl" for i in range(2)]
    try:
        until_line(coordinator_log, "collecting", coordinator)  # consuming by then
        for i in range(2):
            args = [
                "participant", "--federation", federation, "--app", SYNTHETIC,
                "--id", f"p{i}", "--partition", f"{i}/2", "--broker", BROKER_URL,
                "--sent-log", str(sent[i]),
            ]  # fmt: skip
            participants.append(start_fedq(*args, log=logs / f"p{i}-{tag}.log"))
        for process in (coordinator, *participants):
            assert process.wait(timeout=180) == 0, coordinator_log.read_text()
    finally:
        for process in (coordinator, *participants):
            if process.poll() is None:
                process.kill()
    return coordinator_log.read_text(), sent


@pytest.mark.broker
def test_a_damaged_last_checkpoint_is_rolled_back_with_the_flag_and_the_run_goes_on(
    tmp_path: Path, federation: str
) -> None:
    root, logs = tmp_path / "state", tmp_path / "logs"
    logs.mkdir()
    folder, models = root / federation, root / federation / "models"
    _, first = federation_run(root, federation, logs, "first")
    last = checkpoint_path(models, ROUNDS)
    truncate(last)

    refused = run_fedq(
        "coordinator", "--federation", federation, "--app", SYNTHETIC,
        "--state-dir", str(root), "--broker", BROKER_URL,
        "--participants", "2", "--rounds", str(ROUNDS), timeout=90,
    )  # fmt: skip
    line = one_line_error(refused)
    assert "model-v000003.npz cannot be read (BadZipFile" in line
    assert "--from-last-good" in line and "fedq audit" in line

    out, second = federation_run(root, federation, logs, "second", "--from-last-good")
    assert "rolled back from v3 to v2" in out, out
    assert "v3's checkpoint model-v000003.npz cannot be read (BadZipFile" in out, out
    assert f"round {ROUNDS}: model v{ROUNDS} from 2 updates" in out, out

    model = load_checkpoint(last)  # v3 made again, from v2
    for tensor in model.values():
        np.testing.assert_allclose(tensor, ROUNDS * SyntheticApp.fedavg_step([0, 1]))
    (aside,) = folder.glob("damaged-*")
    assert (aside / "models" / last.name).stat().st_size < last.stat().st_size
    assert (aside / "ledger-before-rollback.sqlite").is_file()
    with sqlite3.connect(folder / "ledger.sqlite") as db:
        rolled = db.execute(
            "SELECT COUNT(*) FROM rejections WHERE reason = 'rolled_back'"
        ).fetchone()[0]
        versions = [v for (v,) in db.execute("SELECT version FROM versions ORDER BY 1")]
    assert rolled == 2 and versions == [1, 2, 3]

    sent_logs = [arg for path in first + second for arg in ("--sent-log", str(path))]
    audit = run_fedq("audit", "--state-dir", str(folder), *sent_logs)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "audit passed" in audit.stderr


def test_the_newest_sound_version_is_gone_on_from_and_nothing_when_all_are_sound(
    tmp_path: Path,
) -> None:
    """A checkpoint that reads but is not the file the ledger recorded is not sound either;
    the versions after the newest sound one go, and a sound state dir is left alone."""
    root = tmp_path / "state"
    run = run_fedq(
        "simulate", "--app", SYNTHETIC, "-n", "2", "--rounds", "4", "--federation", "f",
        "--state-dir", str(root),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    folder = root / "f"
    ledger = UpdateLedger(folder / "ledger.sqlite")
    try:
        assert roll_back_to_last_good(folder, ledger) is None
        models = folder / "models"
        truncate(checkpoint_path(models, 4))
        third = checkpoint_path(models, 3)
        third.write_bytes(checkpoint_path(models, 1).read_bytes())  # reads, but is v1's
        failures = audit_ledger(folder / "ledger.sqlite").failures
        assert [f.endswith(RESUME_HINT) for f in failures] == [False, True], failures
        done = roll_back_to_last_good(folder, ledger)
        assert done is not None and (done.good, done.last, done.updates) == (2, 4, 4)
        newest = ledger.last_version()
        assert newest is not None and newest.version == 2
        assert sorted(p.name for p in (done.folder / "models").iterdir()) == [
            "model-v000003.npz",
            "model-v000004.npz",
        ]
    finally:
        ledger.close()
    audit = run_fedq("audit", "--state-dir", str(folder))
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_simulate_resuming_a_damaged_state_dir_takes_the_flag_too(tmp_path: Path) -> None:
    """``fedq simulate`` resumes its state dir like a coordinator: the same line, the same
    flag, on the embedded broker."""
    args = [
        "simulate", "--app", SYNTHETIC, "-n", "2", "--rounds", "3", "--federation", "f",
        "--state-dir", str(tmp_path),
    ]  # fmt: skip
    assert run_fedq(*args).returncode == 0
    truncate(checkpoint_path(tmp_path / "f" / "models", 3))
    assert "--from-last-good" in one_line_error(run_fedq(*args))
    resumed = run_fedq(*args, "--from-last-good")
    assert resumed.returncode == 0, resumed.stderr
    assert "rolled back from v3 to v2" in resumed.stderr
    assert "round 3: model v3 from 2 updates" in resumed.stderr
    model = load_checkpoint(checkpoint_path(tmp_path / "f" / "models", 3))
    for tensor in model.values():
        np.testing.assert_allclose(tensor, 3 * SyntheticApp.fedavg_step([0, 1]))
    assert run_fedq("audit", "--state-dir", str(tmp_path / "f")).returncode == 0
