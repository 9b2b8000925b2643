"""``fedq audit``: a federation's ledger and checkpoints, as committed, pass; any edit fails."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from dataclasses import asdict
from pathlib import Path

import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.audit import audit
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import GENESIS, UpdateLedger, chain_hash
from fedq.participant.config import ParticipantConfig
from fedq.runtime.sent_log import SentUpdate
from fedq.simulation import SimulationPlan, simulate
from tests.helpers import run_fedq

pytestmark = pytest.mark.processes


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


def _sent_log_of_every_committed_update(state: Path) -> list[SentUpdate]:
    """What the participants' sent logs would say: every committed update, confirmed."""
    ledger = UpdateLedger(state / "ledger.sqlite")
    try:
        return [
            SentUpdate("fed", u.update_id, u.participant, u.base_version, 1)
            for v in (1, 2, 3)
            for u in ledger.updates_of(v)
        ]
    finally:
        ledger.close()


def _rechain(path: Path) -> None:
    """Recompute every version's count and chain, as a coordinator that lost an update
    without knowing would have written them: the chain alone then sees nothing wrong."""
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE versions SET n_updates = "
            "(SELECT count(*) FROM updates WHERE updates.version = versions.version)"
        )
    ledger = UpdateLedger(path)
    rows = ledger.chained_rows()
    ledger.close()
    chain = GENESIS
    with sqlite3.connect(path) as db:
        for row, updates, _ in rows:
            fixed = list(row)
            fixed[3] = len(updates)
            chain = chain_hash(chain, tuple(fixed), updates)
            db.execute("UPDATE versions SET chain = ? WHERE version = ?", (chain, row[0]))


def test_an_update_lost_without_a_trace_in_the_ledger_fails_against_the_sent_logs(
    state: Path,
) -> None:
    """A loss the ledger cannot show (its row gone, counts and chain consistent) is what
    the participants' sent logs are for: the update the broker confirmed is in no version
    and was never refused."""
    sent = _sent_log_of_every_committed_update(state)
    lost = sent[4]
    path = state / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM updates WHERE update_id = ?", (lost.update_id,))
    _rechain(path)
    assert audit(path).ok  # the ledger alone is consistent
    report = audit(path, sent)
    assert report.failures == [
        f"update {lost.update_id} of {lost.participant} (on v{lost.base_version}) was confirmed "
        "by the broker but is in no version and was not refused: lost"
    ]
    logs = state / "sent.jsonl"
    logs.write_text("".join(json.dumps(asdict(u)) + "\n" for u in sent))
    result = run_fedq("audit", "--state-dir", str(state), "--sent-log", str(logs))
    assert result.returncode == 1 and f"update {lost.update_id}" in result.stderr


def test_an_update_in_two_versions_fails(state: Path) -> None:
    """The update table's key forbids a second row of an id; a ledger whose table was
    rebuilt without it (by hand, or by a bug) must still not hide one update in two versions."""
    path = state / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(updates)")]
        listed = ", ".join(columns)
        db.execute("ALTER TABLE updates RENAME TO keyed")
        db.execute(f"CREATE TABLE updates AS SELECT {listed} FROM keyed")
        db.execute("DROP TABLE keyed")
        first = db.execute("SELECT update_id FROM updates WHERE version = 1 LIMIT 1").fetchone()[0]
        db.execute(
            f"INSERT INTO updates SELECT {listed.replace('version', '3', 1)} FROM updates "
            "WHERE update_id = ?",
            (first,),
        )
    _rechain(path)
    failures = audit(path).failures
    assert f"update {first} appears 2 times" in failures
