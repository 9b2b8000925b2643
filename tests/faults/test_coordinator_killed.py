"""The coordinator gets SIGKILL at each point of a version (``fedq.runtime.failpoints``:
the process kills itself at that very instruction) while real participants keep working;
a new coordinator on the same state dir finishes the federation. Then nothing confirmed
is lost, nothing is applied twice, every version took exactly its step, refused updates are in
the dead-letter queue, and `fedq audit` passes."""

from __future__ import annotations

import pytest

from tests.faults.harness import CHUNK, PARAMS, FaultyFederation

pytestmark = [pytest.mark.broker, pytest.mark.processes]

#: v0's model is chunks 1-7 of the fanouts: the 10th is the third of v1's.
MID_MODEL = 10

CASES = {
    "collecting": ("collecting", []),
    "after checkpoint, before ledger": ("after_checkpoint:2", []),
    "after ledger, before acks": ("after_ledger_commit:2", []),
    "publishing a chunked model": (f"publishing_model:{MID_MODEL}", ["--chunk-bytes", str(CHUNK)]),
    # Every version checked exactly too: MIFA's step replayed from the ledger (async mode's
    # default remedy, its cache rebuilt from its files), CA2FL's, or FedBuff's weights.
    "async, between versions": ("between_versions:2", ["--mode", "async", "--quorum", "2"]),
    "async CA2FL, between versions": (
        "between_versions:2",
        ["--mode", "async", "--quorum", "2", "--async-remedy", "cached"],
    ),
    "async FedBuff, between versions": (
        "between_versions:2",
        ["--mode", "async", "--quorum", "2", "--async-remedy", "none"],
    ),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_a_coordinator_killed_at_each_point_loses_and_double_counts_nothing(
    tmp_path, federation, kind
):
    failpoint, coordinator_args = CASES[kind]
    fed = FaultyFederation(tmp_path, federation, coordinator_args=coordinator_args)
    assert PARAMS * 4 > 6 * CHUNK  # the chunked case publishes 7 chunks per model
    try:
        first = fed.start_coordinator("coordinator-1", failpoint)
        participants = [fed.start_participant(i) for i in range(fed.participants)]
        assert fed.wait_coordinator(first, killed=True) == -9, fed.logs()
        second = fed.start_coordinator("coordinator-2")
        assert fed.wait_coordinator(second) == 0, fed.logs()
        for participant in participants:
            assert participant.wait(timeout=120) == 0, fed.logs()
        accounting = fed.account()
        fed.record(f"coordinator killed: {kind}", 1, accounting)
        assert accounting.versions == fed.rounds, fed.logs()
        assert accounting.confirmed >= fed.rounds * 2
        assert accounting.lost == [] and accounting.applied_twice == []
        assert accounting.missing_from_dlq == []
        assert accounting.committed + accounting.refused == accounting.confirmed
        audited = fed.audit_command()
        assert audited.returncode == 0, audited.stdout + audited.stderr
        assert "audit passed" in audited.stdout + audited.stderr
    finally:
        fed.close()
