"""``fedq audit``: a federation's ledger and checkpoints, as committed, pass; any edit fails."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.audit import audit
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger, chain_hash
from fedq.participant.config import ParticipantConfig
from fedq.simulation import SimulationPlan, simulate
from tests.helpers import run_fedq


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation of 3 participants and 3 versions, as the coordinator left it."""
    state = tmp_path_factory.mktemp("audit") / "fed"
    plan = SimulationPlan(
        coordinator=CoordinatorConfig(federation="fed", participants=3, rounds=3, state_dir=state),
        participant=ParticipantConfig(federation="fed", participant_id="p"),
    )
    asyncio.run(simulate(plan, SyntheticApp(params=1000)))
    return state


@pytest.fixture
def state(committed: Path, tmp_path: Path) -> Path:
    """A copy each test may damage."""
    return Path(shutil.copytree(committed, tmp_path / "fed"))


def test_what_was_committed_passes(state: Path) -> None:
    report = audit(state / "ledger.sqlite")
    assert report.ok, report.failures
    assert (report.versions, report.checkpoints, report.updates) == (3, 3, 9)
    result = run_fedq("audit", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    assert "3 versions chained" in result.stderr and "audit passed" in result.stderr


def test_a_changed_checkpoint_fails(state: Path) -> None:
    checkpoint = state / "models" / "model-v000002.npz"
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    report = audit(state / "ledger.sqlite")
    assert report.failures == [f"v2: checkpoint {checkpoint} does not match its sha256"]
    result = run_fedq("audit", "--state-dir", str(state))
    assert result.returncode == 1
    assert "FAILED v2: checkpoint" in result.stderr


def test_a_changed_ledger_row_fails_and_so_does_every_later_version(state: Path) -> None:
    with sqlite3.connect(state / "ledger.sqlite") as db:
        db.execute("UPDATE updates SET weight = weight * 2 WHERE version = 2")
    failures = audit(state / "ledger.sqlite").failures
    assert [f.split(":")[0] for f in failures] == ["v2", "v3"]
    assert all("its record or one before it changed" in f for f in failures)


def test_recomputing_the_changed_versions_own_hash_still_breaks_the_next_one(
    state: Path,
) -> None:
    """An editor who fixes up the edited version's chain still leaves the next link broken."""
    path = state / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("UPDATE versions SET total_weight = 1.0 WHERE version = 2")
    ledger = UpdateLedger(path)
    rows = ledger.chained_rows()
    ledger.close()
    forged = chain_hash(rows[0][2], rows[1][0], rows[1][1])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE versions SET chain = ? WHERE version = 2", (forged,))
    failures = audit(path).failures
    assert [f.split(":")[0] for f in failures] == ["v3"]


def test_a_removed_update_row_fails(state: Path) -> None:
    with sqlite3.connect(state / "ledger.sqlite") as db:
        db.execute("DELETE FROM updates WHERE rowid = (SELECT MIN(rowid) FROM updates)")
    failures = audit(state / "ledger.sqlite").failures
    assert failures and failures[0].startswith("v1: records 3 updates but 2 rows")
