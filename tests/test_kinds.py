"""The markers hold: a test that says it needs nothing and then reaches the network or
starts a process fails, naming the marker it lacks, and so does one labelled otherwise
that talks to the broker (refused as a broker that is down would, then failed at its
teardown, whatever the client made of the refusal); a labelled one is otherwise left
alone."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.processes

CONFTEST = """
from tests import kinds
from tests.kinds import pure_guard

def pytest_configure(config):
    kinds.configure(config)

def pytest_collection_modifyitems(items):
    kinds.mark_pure(items)
"""

TESTS = """
import socket, subprocess, sys
import pytest

def _connect():
    with socket.create_server(("127.0.0.1", 0)) as server:
        socket.create_connection(server.getsockname()).close()

def test_pure_but_connects():
    _connect()

def test_pure_but_starts_a_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

def test_pure_and_is():
    assert sum(range(4)) == 6

@pytest.mark.broker
def test_labelled_broker_connects():
    _connect()

@pytest.mark.processes
def test_labelled_processes_starts_one():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

@pytest.mark.processes
def test_labelled_processes_but_talks_to_the_broker():
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", 5672))

@pytest.mark.keras
def test_labelled_keras_connects_elsewhere():
    _connect()
"""


def test_a_pure_claim_is_checked_while_the_test_runs(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[1]))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_claims=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, failed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*opened a network connection: mark it * with pytest.mark.broker (*, from "
            "thread 'MainThread')",
            "E * started a process: mark it * with pytest.mark.processes",
            "*this test connected to the broker without its marker: mark it * with "
            "pytest.mark.broker (('127.0.0.1', 5672), from thread *)",
        ],
        consecutive=False,
    )
    assert pytester.runpytest_subprocess("-m", "pure", "-q").ret != 0
