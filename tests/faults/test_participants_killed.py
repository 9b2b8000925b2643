"""Participants get SIGKILL at random moments (seeded) and are restarted at once: each
rejoins and trains on the newest model, and the federation completes with nothing
confirmed lost or applied twice."""

from __future__ import annotations

import random
import signal
import time

import pytest

from fedq.runtime.sent_log import read_sent
from tests.faults.harness import FaultyFederation

pytestmark = [pytest.mark.broker, pytest.mark.processes]

KILLS = 6


def test_participants_killed_at_random_moments_rejoin_on_the_newest_model(tmp_path, federation):
    rng = random.Random(8)
    fed = FaultyFederation(tmp_path, federation, rounds=8, participant_args=["--delay", "0.3"])
    try:
        coordinator = fed.start_coordinator("coordinator")
        participants = [fed.start_participant(i) for i in range(fed.participants)]
        restarts = []  # (participant, version committed when it restarted, lines logged then)
        for kill in range(KILLS):
            time.sleep(rng.uniform(0.2, 1.2))
            if coordinator.poll() is not None:
                break
            i = rng.randrange(fed.participants)
            participants[i].send_signal(signal.SIGKILL)
            participants[i].wait(timeout=30)
            version = fed.committed_version()
            logged = len(read_sent(fed.sent_log(i))) if fed.sent_log(i).exists() else 0
            restarts.append((i, version, logged))
            participants[i] = fed.start_participant(i, f"p{i}-restart-{kill}")
        assert len(restarts) >= 3, fed.logs()  # the federation did not end before the kills
        assert fed.wait_coordinator(coordinator) == 0, fed.logs()
        for participant in participants:
            assert participant.wait(timeout=120) == 0, fed.logs()
        accounting = fed.account()
        fed.record("participants killed at random and restarted", len(restarts), accounting)
        assert accounting.versions == fed.rounds, fed.logs()
        assert accounting.lost == [] and accounting.applied_twice == []
        assert accounting.missing_from_dlq == []
        for i, version, logged in restarts:
            after = read_sent(fed.sent_log(i))[logged:]
            if after:  # it trained again before the end: on a model at least that new
                assert after[0].base_version >= version, (i, version, after[0])
    finally:
        fed.close()
