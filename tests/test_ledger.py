"""The ledger and checkpoints: atomic commits, one version per update id, torn-free files."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import (
    checkpoint_path,
    commit_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
    stage_checkpoint,
)
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.ledger_schema import LedgerError
from fedq.coordinator.ledger_view import LedgerView
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.records import UpdateRecord, VersionRecord, VersionSummary
from fedq.participant.config import ParticipantConfig
from fedq.simulation import SimulationPlan, simulate


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Versions name their checkpoint relative to the test's own folder (the ledger hashes it)."""
    monkeypatch.chdir(tmp_path)


def version(v: int) -> VersionRecord:
    checkpoint = Path(f"model-v{v}.npz")
    checkpoint.write_bytes(f"checkpoint {v}".encode())
    return VersionRecord(v, v, "quorum", 10.0, 1.0, 2.0, str(checkpoint), {"accuracy": 0.5})


def update(uid: str, participant: str = "p") -> UpdateRecord:
    return UpdateRecord(uid, participant, 1, 0, 5, 5.0, digest=f"d-{uid}")


def test_a_version_and_its_updates_commit_together(tmp_path):
    ledger = UpdateLedger(tmp_path / "ledger.sqlite")
    ledger.commit_version(version(1), [update("a"), update("b", "q")])
    assert ledger.has_update("a") and ledger.has_update("b")
    [row] = ledger.history()
    assert (row.version, row.n_updates, row.participants) == (1, 2, ["p", "q"])
    last = ledger.last_version()
    assert last is not None and last.metrics == {"accuracy": 0.5}


def test_history_averages_the_participants_local_metrics_by_examples(tmp_path):
    ledger = UpdateLedger(tmp_path / "ledger.sqlite")
    small = UpdateRecord("a", "p", 1, 0, 10, 10.0, digest="da", metrics={"accuracy": 0.2})
    large = UpdateRecord("b", "q", 1, 0, 30, 30.0, digest="db", metrics={"accuracy": 0.6})
    silent = UpdateRecord("c", "r", 1, 0, 60, 60.0, digest="dc")  # reports nothing
    ledger.commit_version(version(1), [small, large, silent])
    assert ledger.history()[0].local_metrics == pytest.approx({"accuracy": 0.5})


def test_an_update_id_can_never_join_a_second_version(tmp_path):
    ledger = UpdateLedger(tmp_path / "ledger.sqlite")
    ledger.commit_version(version(1), [update("a")])
    with pytest.raises(sqlite3.IntegrityError):
        ledger.commit_version(version(2), [update("c"), update("a")])
    assert [h.version for h in ledger.history()] == [1]  # version 2 rolled back whole
    assert not ledger.has_update("c")
    assert ledger.update_ids_by_version() == {"a": 1}


def test_rejections_are_counted_by_reason_and_shown_with_their_round(tmp_path):
    ledger = UpdateLedger(tmp_path / "ledger.sqlite")
    ledger.commit_version(version(1), [update("a")])
    ledger.record_rejection("x", "slow", 1, 0, 0, "stale", "late")
    ledger.record_rejection(None, None, None, None, 1, "undecodable", "garbage")
    assert ledger.rejection_counts() == {"stale": 1, "undecodable": 1}
    assert ledger.history()[0].rejected == {"stale": 1}


def test_a_committed_update_keeps_its_digest(tmp_path):
    ledger = UpdateLedger(tmp_path / "ledger.sqlite")
    ledger.commit_version(version(1), [update("a")])
    assert ledger.digest_of("a") == "d-a" and ledger.digest_of("b") is None
    [row] = ledger.updates_of(1)
    assert (row.update_id, row.digest, row.staleness) == ("a", "d-a", 0)


def test_a_ledger_of_the_old_schema_is_refused_with_what_to_do(tmp_path):
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    db.execute("CREATE TABLE versions (version INTEGER PRIMARY KEY, round INTEGER NOT NULL)")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="use a new --state-dir"):
        UpdateLedger(tmp_path / "ledger.sqlite")


def test_ledger_survives_reopening(tmp_path):
    UpdateLedger(tmp_path / "l.sqlite").commit_version(version(1), [update("a")])
    assert UpdateLedger(tmp_path / "l.sqlite").count_updates() == 1


def test_a_checkpoint_carries_the_optimizer_state_whatever_the_tensor_names(tmp_path):
    weights = {"w000:kernel/0": np.ones(2, np.float32)}
    state = {"m.w000:kernel/0": np.full(2, 0.5, np.float32)}
    path = save_checkpoint(tmp_path, 1, weights, state)
    assert list(load_checkpoint(path)) == ["w000:kernel/0"]
    restored = load_optimizer_state(path)
    assert list(restored) == ["m.w000:kernel/0"]
    np.testing.assert_array_equal(restored["m.w000:kernel/0"], [0.5, 0.5])
    assert load_optimizer_state(save_checkpoint(tmp_path, 2, weights)) == {}


def test_checkpoints_round_trip_in_model_order_and_leave_no_temp_files(tmp_path):
    weights = {"z": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), np.float32)}
    save_checkpoint(tmp_path, 1, weights)
    path = save_checkpoint(tmp_path, 2, {k: v + 1 for k, v in weights.items()})
    assert path == checkpoint_path(tmp_path, 2)
    loaded = load_checkpoint(path)
    assert list(loaded) == ["z", "a"]
    np.testing.assert_array_equal(loaded["z"], [1, 2, 3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-v000001.npz", "model-v000002.npz"]


async def test_a_checkpoint_the_ledger_never_committed_is_redone_not_trusted(tmp_path):
    """A coordinator died between writing checkpoint v2 and committing it in the ledger,
    and another left v2 staged (published, never committed): the restart removes the
    staged file and redoes v2."""

    def plan(rounds: int) -> SimulationPlan:
        return SimulationPlan(
            CoordinatorConfig(federation="f", participants=2, rounds=rounds, state_dir=tmp_path),
            ParticipantConfig(federation="f", participant_id="p"),
        )

    app = SyntheticApp(params=4)
    await simulate(plan(1), app)
    wrong = {k: v + 99 for k, v in app.initial_weights().items()}
    save_checkpoint(tmp_path / "models", 2, wrong)
    staged = stage_checkpoint(tmp_path / "models", wrong)
    result = await simulate(plan(2), app)
    assert not staged.exists()
    assert result.model_version == 2 and result.updates_incorporated == 4
    step = SyntheticApp.fedavg_step([0, 1])
    for tensor in load_checkpoint(checkpoint_path(tmp_path / "models", 2)).values():
        np.testing.assert_allclose(tensor, 2 * step, rtol=1e-5)


async def test_observers_receive_the_record_the_ledger_reads_back(tmp_path):
    class Committed(CoordinatorObserver):
        def __init__(self) -> None:
            self.rows: list[VersionSummary] = []

        def version_committed(self, row: VersionSummary) -> None:
            self.rows.append(row)

    seen = Committed()
    plan = SimulationPlan(
        CoordinatorConfig(federation="f", participants=3, rounds=2, state_dir=tmp_path),
        ParticipantConfig(federation="f", participant_id="p"),
    )
    await simulate(plan, SyntheticApp(params=4), [seen])
    stored = UpdateLedger(tmp_path / "ledger.sqlite").history()
    assert seen.rows == stored
    assert [row.local_metrics for row in stored] == [{"loss": 0.0}] * 2


def test_each_participants_share_and_its_stale_refusals_since_its_last_fold(tmp_path):
    """What `fedq history` and the dashboard show of a participant being left out."""
    ledger = UpdateLedger(tmp_path / "ledger.sqlite")
    ledger.commit_version(version(1), [update("a", "p0"), update("b", "p1")])
    ledger.commit_version(version(2), [update("c", "p0")])
    for uid, who, during, reason in [
        ("s0", "p1", 0, "stale"),  # while v1 was made, the version p1 was folded into
        ("s1", "p1", 1, "stale"),
        ("s2", "p1", 2, "stale"),
        ("s3", "p2", 1, "stale"),  # never folded: every one counts
        ("n0", "p0", 2, "norm_exceeded"),
    ]:
        ledger.record_rejection(uid, who, 1, 0, during, reason, "")
    ledger.close()
    with LedgerView.open(tmp_path / "ledger.sqlite") as view:
        accounts = {a.participant: a for a in view.participants()}
    assert {p: (a.accepted, a.share, a.stale_since_folded) for p, a in accounts.items()} == {
        "p0": (2, pytest.approx(2 / 3), 0),
        "p1": (1, pytest.approx(1 / 3), 2),
        "p2": (0, 0.0, 1),
    }


def test_the_ledger_records_the_hash_of_the_checkpoint_as_it_was_written(tmp_path):
    """The commit hashes the checkpoint while its fsync waits: the hash it hands the
    ledger is the file's, the one ``fedq audit`` checks against."""
    weights = {"w": np.arange(300_000, dtype=np.float32)}
    path, sha256 = commit_checkpoint(stage_checkpoint(tmp_path, weights), tmp_path, 1)
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    UpdateLedger(tmp_path / "l.sqlite").commit_version(
        dataclasses.replace(version(1), checkpoint=str(path)), [], sha256
    )
    with contextlib.closing(sqlite3.connect(tmp_path / "l.sqlite")) as db:
        recorded = db.execute("SELECT checkpoint_sha256 FROM versions WHERE version = 1")
        assert recorded.fetchone() == (sha256,)
