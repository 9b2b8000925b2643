"""Prometheus metrics of a coordinator: an observer that counts, and a server for ``/metrics``.

:class:`PrometheusMetrics` keeps its own registry, never prometheus_client's global one, so
any number of coordinators (or tests) in one process count apart. Every series carries a
``federation`` label. The hooks only touch in-memory values: they never block the loop.

:func:`serve_metrics` serves that registry over HTTP on the running event loop (uvicorn),
for as long as its ``async with`` block lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Generator

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app

from fedq.coordinator.config import ConfigError
from fedq.coordinator.observers import CommitTimings, CoordinatorObserver, UpdateSeen
from fedq.coordinator.records import VersionSummary
from fedq.coordinator.stall import Stall

log = logging.getLogger("fedq.metrics")

#: Staleness is a whole number of versions; beyond 16 an update is ancient whatever the mode.
STALENESS_BUCKETS = tuple(float(tau) for tau in range(17))
#: A version lasts from under a second (synthetic app) to an hour (real training, deadlines).
VERSION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: A commit's parts: milliseconds for small models, tens of seconds for a large evaluation.
COMMIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class MetricsUnavailable(ConfigError):
    """The metrics endpoint cannot listen where it was asked to; the message says what to do.
    A :class:`ConfigError`, so the CLI reports it in one line like any other bad setting."""


class PrometheusMetrics(CoordinatorObserver):
    """A coordinator's counts as Prometheus series, for one federation.

    Invariant: ``fedq_updates_received_total`` = ``fedq_updates_accepted_total`` +
    sum over reasons of ``fedq_updates_rejected_total`` + ``fedq_updates_duplicate_total``
    (a duplicate is acked and never applied: counted apart, as the ledger's result does).
    """

    def __init__(self, federation: str) -> None:
        self.federation = federation
        self.registry = CollectorRegistry()
        on = self.registry
        by = ("federation",)
        # Children bound to the federation now exist from the start: they read 0 until
        # something happens. Epsilon, loss and accuracy are bound when first known: no
        # sample beats a made-up zero.
        self._received = Counter(
            "fedq_updates_received", "Update deliveries seen.", by, registry=on
        ).labels(federation)
        self._accepted = Counter(
            "fedq_updates_accepted", "Updates folded into a version.", by, registry=on
        ).labels(federation)
        self._duplicates = Counter(
            "fedq_updates_duplicate",
            "Copies of an update already held or committed: acked, not applied.",
            by,
            registry=on,
        ).labels(federation)
        self._rejected = Counter(
            "fedq_updates_rejected",
            "Updates refused and dead-lettered, by reason.",
            (*by, "reason"),
            registry=on,
        )
        self._dead_letter_dropped = Counter(
            "fedq_dead_letter_dropped",
            "Refused updates (or chunks) without their copy in the dead-letter queue, by "
            "reason and cause: queue_full, sender_share, unroutable.",
            (*by, "reason", "cause"),
            registry=on,
        )
        self._bytes = Counter(
            "fedq_updates_received_bytes",
            "Bytes of update bodies as received, whatever their fate.",
            by,
            registry=on,
        ).labels(federation)
        self._staleness = Histogram(
            "fedq_update_staleness_versions",
            "Versions between an accepted update's base and the version it was folded into.",
            by,
            registry=on,
            buckets=STALENESS_BUCKETS,
        ).labels(federation)
        self._version_seconds = Histogram(
            "fedq_version_duration_seconds",
            "Wall time from a version's opening to its commit.",
            by,
            registry=on,
            buckets=VERSION_BUCKETS,
        ).labels(federation)
        self._commit_seconds = Histogram(
            "fedq_commit_phase_seconds",
            "Time of a commit's phases: aggregate, evaluate, checkpoint, ledger.",
            (*by, "phase"),
            registry=on,
            buckets=COMMIT_BUCKETS,
        )
        self._version = Gauge(
            "fedq_model_version", "The newest model version.", by, registry=on
        ).labels(federation)
        self._open_accepted = Gauge(
            "fedq_open_version_accepted_updates",
            "Updates accepted into the open version.",
            by,
            registry=on,
        ).labels(federation)
        self._alive = Gauge(
            "fedq_participants_alive",
            "Participants seen within the liveness window.",
            by,
            registry=on,
        ).labels(federation)
        self._missing = Gauge(
            "fedq_version_cannot_close_missing_updates",
            "Updates the open version lacks even if every live participant sends one, with "
            "no deadline it may close at: above 0, it cannot close (start a participant).",
            by,
            registry=on,
        ).labels(federation)
        self._epsilon = Gauge(
            "fedq_privacy_epsilon",
            "Differential privacy spent up to the newest version.",
            by,
            registry=on,
        )
        self._loss = Gauge(
            "fedq_held_out_loss", "The newest model's held-out loss.", by, registry=on
        )
        self._accuracy = Gauge(
            "fedq_held_out_accuracy_ratio",
            "The newest model's held-out accuracy, 0 to 1.",
            by,
            registry=on,
        )

    def version_opened(self, version: int, round_: int | None) -> None:
        self._version.set(version)
        self._open_accepted.set(0)

    def update_seen(self, update: UpdateSeen) -> None:
        self._received.inc()
        self._bytes.inc(update.size)
        if update.accepted:
            self._accepted.inc()
            self._open_accepted.inc()
            if update.staleness is not None:
                self._staleness.observe(update.staleness)
        elif update.reason == "duplicate":
            self._duplicates.inc()
        else:
            self._rejected.labels(self.federation, update.reason or "unknown").inc()

    def dead_letter_dropped(self, reason: str, cause: str) -> None:
        self._dead_letter_dropped.labels(self.federation, reason, cause).inc()

    def version_committed(self, row: VersionSummary) -> None:
        self._version.set(row.version)
        self._version_seconds.observe(row.seconds)
        if row.epsilon is not None:
            self._epsilon.labels(self.federation).set(row.epsilon)
        if (loss := row.metrics.get("loss")) is not None:
            self._loss.labels(self.federation).set(loss)
        if (accuracy := row.metrics.get("accuracy")) is not None:
            self._accuracy.labels(self.federation).set(accuracy)

    def commit_timed(self, timings: CommitTimings) -> None:
        for phase, seconds in (
            ("aggregate", timings.aggregate),
            ("evaluate", timings.evaluate),
            ("checkpoint", timings.checkpoint),
            ("ledger", timings.ledger),
        ):
            self._commit_seconds.labels(self.federation, phase).observe(seconds)

    def participants_alive(self, alive: int) -> None:
        self._alive.set(alive)

    def version_stalled(self, version: int, stall: Stall | None) -> None:
        self._missing.set(0 if stall is None else stall.needs - stall.has - stall.may_send)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn as a guest on the host's event loop: SIGINT/SIGTERM belong to the host (the
    CLI cancels the federation on them); uvicorn's own handlers would take them first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a taken port is our one-line error, not
    uvicorn's ``sys.exit`` from inside a task."""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, *_, address = found[0]
        return socket.create_server(address, family=family)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why, fix = "the port is in use", "choose another port or stop what holds it"
        elif isinstance(exc, socket.gaierror):
            why, fix = str(exc.strerror), "choose another host"
        else:  # e.g. a port below 1024 (EACCES), an address not of this machine
            why, fix = os.strerror(exc.errno or 0), "choose another host or port"
        raise MetricsUnavailable(f"cannot serve metrics on {host}:{port}: {why}; {fix}") from None


@contextlib.asynccontextmanager
async def serve_metrics(
    metrics: PrometheusMetrics, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``metrics`` at ``http://host:port/metrics`` while the block runs; yields that
    URL (``port=0`` picks a free port). Loopback by default: metrics are for this machine
    unless the operator says otherwise. Raises :class:`MetricsUnavailable` on entry when
    the address cannot be bound. Any path answers with the metrics, as prometheus_client's
    own server does."""
    sock = await _listen(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        make_asgi_app(registry=metrics.registry),
        log_level="warning",
        log_config=None,  # the host configures logging; uvicorn must not reset it
        access_log=False,
        lifespan="off",  # prometheus_client's app answers HTTP only
        timeout_graceful_shutdown=2,  # a scrape in flight, not an idle keep-alive, may finish
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="fedq-metrics")
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{bound_port}/metrics"
    finally:
        server.should_exit = True
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
        sock.close()
        if isinstance(outcome, Exception):  # watching must never stop the work: say so, go on
            log.warning("the metrics server at %s:%d failed: %r", host, bound_port, outcome)
