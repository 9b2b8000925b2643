"""A federation of real `fedq` processes for fault tests, and its accounting afterwards.

The coordinator and each participant are their own process on a real RabbitMQ, with
``fedq.apps.synthetic:app``, whose FedAvg is known exactly. Participants keep a sent log
(each update the broker confirmed), so that after any crash the accounting is the promise
itself: every confirmed update is in a committed version or refused with a reason (and
then in the dead-letter queue), none is in two versions, and each version's model is
exactly the FedAvg of the updates its ledger lists (an update folded twice, or a partial
one folded, would change it).
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.audit import audit
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.records import UpdateRecord
from fedq.messages.amqp import AmqpTransport
from fedq.messages.topology import Topology
from fedq.messages.transport import Delivery
from fedq.runtime.peak_memory import PeakRss
from fedq.runtime.sent_log import SentUpdate, read_sent
from tests.conftest import BROKER_URL
from tests.fault_table import FaultRow, record
from tests.helpers import drain, run_fedq, start_fedq, wait_with_peak_rss

PARAMS = 100_000  # 400 kB of float32: 7 chunks of 64 KiB when chunked
CHUNK = 1 << 16


@dataclass
class Accounting:
    confirmed: int
    committed: int
    refused: int
    lost: list[str]
    #: Update ids in more than one version, and versions whose model is not the exact
    #: FedAvg of their ledger's updates.
    applied_twice: list[str]
    #: Refused update ids with no copy in the dead-letter queue.
    missing_from_dlq: list[str]
    versions: int
    #: What the dead-letter queue held (drained).
    dead_letters: list[Delivery]


@dataclass
class FaultyFederation:
    root: Path
    name: str
    participants: int = 3
    rounds: int = 4
    coordinator_args: list[str] = field(default_factory=list)
    participant_args: list[str] = field(default_factory=list)
    broker: str = BROKER_URL
    #: Broker users (name, password) the participants log in as, their ids the user names
    #: (for --verify-identity); by default p0, p1 ... on ``broker``'s own user.
    users: list[tuple[str, str]] | None = None
    #: The synthetic model's parameter count.
    params: int = PARAMS
    peak_rss_mib: float = 0.0
    #: Coordinator exits the test did not cause (neither 0 nor its own SIGKILL).
    crashes: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: Each coordinator's peak memory, watched from its start, by pid.
    coordinator_peaks: dict[int, PeakRss] = field(default_factory=dict)

    @property
    def state(self) -> Path:
        return self.root / self.name

    def participant_id(self, index: int) -> str:
        return f"p{index}" if self.users is None else self.users[index][0]

    def participant_url(self, index: int) -> str:
        if self.users is None:
            return self.broker
        name, password = self.users[index]
        scheme, rest = self.broker.split("://", 1)
        return f"{scheme}://{name}:{password}@{rest.split('@', 1)[1]}"

    def sent_log(self, index: int) -> Path:
        return self.root / f"sent-p{index}.jsonl"

    def start_coordinator(
        self, label: str, failpoint: str | None = None, *extra: str
    ) -> subprocess.Popen[bytes]:
        args = ["--federation", self.name, "--app", "fedq.apps.synthetic:app"]
        args += ["--participants", str(self.participants), "--rounds", str(self.rounds)]
        args += ["--state-dir", str(self.root), "--broker", self.broker, "--linger", "10"]
        env = {"FEDQ_SYNTHETIC_PARAMS": str(self.params)}
        if failpoint:
            env["FEDQ_FAILPOINT"] = failpoint
        process = start_fedq(
            "coordinator",
            *args,
            *self.coordinator_args,
            *extra,
            log=self.root / f"{label}.log",
            env=env,
        )
        self.processes.append(process)
        self.coordinator_peaks[process.pid] = PeakRss(process.pid)
        return process

    def start_participant(
        self,
        index: int,
        label: str | None = None,
        *extra: str,
        via: list[str] | None = None,
        broker: str | None = None,
        failpoint: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Participant ``index`` as a process (through ``via``, e.g. in a network namespace,
        and to ``broker`` instead of its usual URL if given; ``failpoint`` armed)."""
        args = ["--federation", self.name, "--app", "fedq.apps.synthetic:app"]
        args += ["--id", self.participant_id(index), "--partition", f"{index}/{self.participants}"]
        args += ["--broker", broker or self.participant_url(index)]
        args += ["--sent-log", str(self.sent_log(index))]
        log = self.root / f"{label or f'p{index}'}.log"
        env = {"FEDQ_SYNTHETIC_PARAMS": str(self.params)}
        if failpoint:
            env["FEDQ_FAILPOINT"] = failpoint
        process = start_fedq(
            "participant", *args, *self.participant_args, *extra, log=log, env=env, via=via
        )
        self.processes.append(process)
        return process

    def wait_coordinator(
        self,
        process: subprocess.Popen[bytes],
        timeout: float = 180,
        *,
        killed: bool = False,
        each: Callable[[], object] = lambda: None,
    ) -> int:
        """Its exit code; counts a crash the test did not cause, and its peak RSS (watched
        since it started). A coordinator still running after ``timeout`` fails the test
        with every log. ``each`` is called while it runs (``wait_with_peak_rss``)."""
        try:
            code, peak = wait_with_peak_rss(process, timeout, each)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the coordinator ran {timeout} s\n{self.logs()}") from None
        peak = max(peak, self.coordinator_peaks[process.pid].mib)
        assert peak > 0, f"pid {process.pid}: its memory was never read"
        self.peak_rss_mib = max(self.peak_rss_mib, peak)
        if code not in ((0, -9) if killed else (0,)):
            self.crashes += 1
        return code

    def ledger_value(self, sql: str) -> int:
        """One number from the ledger, read without writing to it while the coordinator
        runs (0 before the ledger exists)."""
        rows = self.ledger_rows(sql)
        return int(rows[0][0] or 0) if rows else 0

    def committed_version(self) -> int:
        return self.ledger_value("SELECT max(version) FROM versions")

    def ledger_rows(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` on the ledger, read only (none before the ledger exists)."""
        path = self.state / "ledger.sqlite"
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                return db.execute(sql).fetchall()
        except sqlite3.OperationalError:  # not made yet
            return []

    def logs(self) -> str:
        """Every process's log, for a failed assertion's message."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted(self.root.glob("*.log"))
        )

    def sent(self) -> list[SentUpdate]:
        """Every participant's sent log. A participant creates its log when it starts, so a
        missing one is a participant that never ran (or a wrong path): never skipped, or
        the accounting would look at fewer updates than were confirmed."""
        missing = [
            str(self.sent_log(i)) for i in range(self.participants) if not self.sent_log(i).exists()
        ]
        assert not missing, f"no sent log at {missing}: " + self.logs()
        return [u for i in range(self.participants) for u in read_sent(self.sent_log(i))]

    def audit_command(self) -> subprocess.CompletedProcess[str]:
        """`fedq audit` with every sent log, as an operator would run it."""
        logs = [a for i in range(self.participants) for a in ("--sent-log", str(self.sent_log(i)))]
        return run_fedq("audit", "--state-dir", str(self.state), *logs, timeout=120)

    def account(self) -> Accounting:
        sent = self.sent()
        report = audit(self.state / "ledger.sqlite", sent)
        ledger = UpdateLedger(self.state / "ledger.sqlite")
        try:
            refused = {r["update_id"] for r in ledger.rejections() if r["reason"] != "duplicate"}
            by_version = [ledger.updates_of(v) for v in range(1, report.versions + 1)]
        finally:
            ledger.close()
        dead = asyncio.run(drain(self.broker, Topology(self.name).rejected))
        in_dlq = {(d.message_id or "").split(".")[0] for d in dead}
        twice = [f for f in report.failures if "appears" in f]
        twice += [
            f"v{v}" for v, step in enumerate(self._steps(by_version), 1) if not self._took(v, step)
        ]
        return Accounting(
            confirmed=len(sent),
            committed=report.sent_committed,
            refused=report.sent_refused,
            lost=[f for f in report.failures if f.endswith(": lost")],
            applied_twice=twice,
            missing_from_dlq=sorted(uid for uid in refused if uid not in in_dlq),
            versions=report.versions,
            dead_letters=dead,
        )

    def _steps(self, by_version: list[list[UpdateRecord]]) -> list[float]:
        """The step each version must have taken, from its ledger rows alone: the synthetic
        app's delta does not depend on the model it was trained on, so an update folded
        twice, or a part of one, changes the model. FedAvg's weighted mean,
        sum(weight x delta) / sum(num_examples), weight being num_examples x the staleness
        factor (1 in round modes); with a caching remedy (its cache is on disk), its step as
        fedq rebases it (``coordinator/strategies/remedies``), replayed from every version's
        updates in order: CA2FL's calibrated step for ``cached``, MIFA's mean of every
        participant's latest local model for ``cached_mean``."""
        index = {self.participant_id(i): i for i in range(self.participants)}

        def delta(u: UpdateRecord) -> float:
            return SyntheticApp.delta_value(index[u.participant])

        cached = (self.state / "local-models").is_dir()
        models = [0.0]  # each version's model less model 0 (every value moves alike)
        cache: dict[str, tuple[float, float]] = {}  # participant: (examples, local model)
        steps = []
        for folded in by_version:
            x, total = models[-1], sum(u.num_examples for u in folded)
            if not cached:
                step = sum(u.weight * delta(u) for u in folded) / total
            else:
                latest = {
                    u.participant: (u.num_examples, models[u.base_version] + delta(u))
                    for u in folded
                }
                if self.remedy == "cached_mean":
                    cache |= latest
                weight = sum(n for n, _ in cache.values())
                step = sum(n * m for n, m in cache.values()) / weight - x if cache else 0.0
                if self.remedy == "cached":
                    # Each contributor moves the step by its new local model less its cached
                    # one (the current model for one not cached yet), weighted by examples.
                    for who, (n, local) in latest.items():
                        before = cache[who][1] if who in cache else x
                        step += n / total * (local - before)
                    cache |= latest
            steps.append(step)
            models.append(x + step)
        return steps

    @property
    def remedy(self) -> str:
        """The async remedy the coordinator runs with: the one its arguments name, else
        async mode's default (``cached_mean``)."""
        args = self.coordinator_args
        if "--async-remedy" in args:
            return args[args.index("--async-remedy") + 1]
        return "cached_mean" if "async" in args else "none"

    def _took(self, version: int, step: float) -> bool:
        """Whether model ``version`` is exactly model ``version - 1`` plus ``step``."""
        models = self.state / "models"
        before = load_checkpoint(checkpoint_path(models, version - 1))
        after = load_checkpoint(checkpoint_path(models, version))
        return all(np.allclose(after[k] - before[k], step, rtol=1e-4) for k in after)

    def record(self, kind: str, tried: int, accounting: Accounting) -> None:
        record(
            FaultRow(
                kind=kind,
                tried=tried,
                lost=len(accounting.lost),
                applied_twice=len(accounting.applied_twice),
                coordinator_crashes=self.crashes,
                peak_rss_mib=self.peak_rss_mib,
            )
        )

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

        async def delete() -> None:
            async with AmqpTransport(self.broker) as transport:
                participants = [self.participant_id(i) for i in range(self.participants)]
                await Topology(self.name).delete(transport, participants)

        asyncio.run(delete())
