"""Shared fixtures. Broker tests talk to the real RabbitMQ at FEDQ_TEST_BROKER_URL."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from fedq.messages.amqp import AmqpTransport
from fedq.messages.memory import MemoryBroker, MemoryTransport
from fedq.messages.transport import Transport
from tests import kinds
from tests.broker_hygiene import ONE_OF, WATCH_ONLY, BrokerWatch, clear_federation, delete
from tests.kinds import pure_guard  # noqa: F401 (an autouse fixture)

# No timing asserts, hypothesis's included: its default 200 ms per example fails tests on
# a loaded machine for being slow, not wrong.
settings.register_profile("fedq", deadline=None)
settings.load_profile("fedq")

pytest_plugins = ["pytester"]

BROKER_URL = os.environ.get("FEDQ_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
def federation(request: pytest.FixtureRequest) -> Iterator[str]:
    """A federation name of the test's own; after a broker test, whatever of it is left on
    the shared broker is deleted (tests/broker_hygiene.py), pass or fail."""
    name = f"{WATCH_ONLY}t{uuid.uuid4().hex[:10]}"
    yield name
    if request.node.get_closest_marker("broker") is not None:
        clear_federation(name, BROKER_URL)


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.broker)])
async def transport_pair(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Transport, Transport]]:
    """Two connections to one broker: the embedded one or the real RabbitMQ."""
    if request.param == "memory":
        broker = MemoryBroker()
        a: Transport = MemoryTransport(broker)
        b: Transport = MemoryTransport(broker)
    else:
        a, b = AmqpTransport(BROKER_URL), AmqpTransport(BROKER_URL)
    async with a, b:
        yield a, b


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault and hostile-input table, when those tests ran (tests/fault_table.py)."""
    from tests.fault_table import ROWS

    if not ROWS:
        return
    header = ("fault or input", "tried", "lost", "applied twice", "crashes", "peak RSS MiB")
    rows = [
        (r.kind, str(r.tried), str(r.lost), str(r.applied_twice),
         str(r.coordinator_crashes), f"{r.peak_rss_mib:.0f}")
        for r in ROWS
    ]  # fmt: skip
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=True)]
    terminalreporter.section("faults and hostile input")
    for line in (header, *rows):
        terminalreporter.write_line(
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
        )
    if os.environ.get("FEDQ_ARTIFACTS") == "1":
        out = Path(__file__).parent / "artifacts" / "faults.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps([asdict(r) for r in ROWS], indent=1))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """In CI (``CI`` set) every test must run: a skip there (no network namespace, a
    missing tool) is a failure naming why, not a silent pass."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"


def pytest_configure(config: pytest.Config) -> None:
    kinds.configure(config)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    kinds.mark_pure(items)


_BROKER_WATCH = pytest.StashKey[BrokerWatch]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BROKER_WATCH] = BrokerWatch()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield  # the test's fixtures are torn down: what is new now, the test left
    if item.get_closest_marker("broker") is not None:
        item.config.stash[_BROKER_WATCH].after_test(item.nodeid)


def _xdist_worker(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist worker (``-n``), not the run's controller."""
    return hasattr(config, "workerinput")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """In the controller of a ``-n`` run: take what a worker that finished saw of the
    shared broker, and the fault rows it recorded (its :func:`pytest_sessionfinish`)."""
    from tests.fault_table import ROWS, FaultRow

    output = getattr(node, "workeroutput", {})
    if "broker_watch" in output:
        node.config.stash[_BROKER_WATCH].merge(output["broker_watch"])
    ROWS.extend(FaultRow(**row) for row in output.get("fault_rows", ()))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The shared broker as found: what broker tests left on it fails the run, named with
    the test that left it, and is deleted (tests/broker_hygiene.py). A pytest-xdist worker
    hands what it saw to the controller instead, which checks once every worker is done."""
    if _xdist_worker(session.config):
        from tests.fault_table import ROWS

        output = session.config.workeroutput  # type: ignore[attr-defined]
        output["broker_watch"] = session.config.stash[_BROKER_WATCH].export()
        output["fault_rows"] = [asdict(row) for row in ROWS]
        return
    watch = session.config.stash.get(_BROKER_WATCH, None)
    left = {} if watch is None else watch.leftovers()
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.section("left on the shared broker", red=True)
        for (kind, vhost, name), test in sorted(left.items()):
            where = f" on vhost {vhost!r}" if vhost else ""
            reporter.write_line(f"{ONE_OF[kind]} {name!r}{where}, first seen after {test}")
        reporter.write_line(f"{len(left)} left by the tests: deleted now; the run fails")
    delete(left)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
