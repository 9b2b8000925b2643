"""One active coordinator and a hot standby (``fedq coordinator --standby``) on one state
dir. The active one gets SIGKILL at a point of a version (a failpoint: collecting,
between its checkpoint and its ledger commit, while publishing a chunked model); the
standby, waiting on the state dir's lock, takes over from the state dir and the broker,
and the federation ends with nothing lost, nothing applied twice, every version once and
exactly FedAvg, and `fedq audit` passing. The takeover time (from the test seeing the
active one dead to the standby collecting a version) is in the fault table's row."""

from __future__ import annotations

import time

import pytest

from tests.conftest import BROKER_URL
from tests.faults.harness import CHUNK, FaultyFederation
from tests.helpers import COORDINATOR_CONSUMERS, until_consumers, until_line

pytestmark = [pytest.mark.broker, pytest.mark.processes]

CASES = {
    "collecting": ("collecting:2", []),
    "mid-commit, after checkpoint": ("after_checkpoint:2", []),
    "publishing a chunked model": ("publishing_model:10", ["--chunk-bytes", str(CHUNK)]),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_a_standby_takes_over_a_killed_coordinator_and_nothing_is_lost(tmp_path, federation, kind):
    failpoint, coordinator_args = CASES[kind]
    fed = FaultyFederation(tmp_path, federation, coordinator_args=coordinator_args)
    try:
        active = fed.start_coordinator("active", failpoint)
        until_consumers(BROKER_URL, f"fedq.{federation}.updates", COORDINATOR_CONSUMERS)
        standby = fed.start_coordinator("standby", None, "--standby")
        until_line(tmp_path / "standby.log", "standby for", standby)
        participants = [fed.start_participant(i) for i in range(fed.participants)]
        assert fed.wait_coordinator(active, killed=True) == -9, fed.logs()
        died = time.monotonic()
        # Taken over: the standby opened a version (it holds the lock, restored the
        # state dir, declared and consumes), the line it prints then.
        until_line(tmp_path / "standby.log", ": collecting", standby, within=60)
        takeover = time.monotonic() - died
        assert fed.wait_coordinator(standby) == 0, fed.logs()
        for participant in participants:
            assert participant.wait(timeout=120) == 0, fed.logs()
        log = (tmp_path / "standby.log").read_text()
        assert "taking over" in log
        accounting = fed.account()
        fed.record(f"standby took over ({takeover:.1f} s): {kind}", 1, accounting)
        assert accounting.versions == fed.rounds, fed.logs()
        assert accounting.lost == [] and accounting.applied_twice == []
        assert accounting.missing_from_dlq == []
        assert accounting.committed + accounting.refused == accounting.confirmed
        audited = fed.audit_command()
        assert audited.returncode == 0, audited.stdout + audited.stderr
    finally:
        fed.close()
