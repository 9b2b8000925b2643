"""Hostile participants: does the honest federation survive each attack, at what cost?

For each attack of ``tests/hostile/attacks.py`` (one entry per attack of issue 21), one
federation on the real RabbitMQ: a ``fedq coordinator`` process (so that its memory and
CPU are its own), three honest ``fedq participant`` processes (``fedq.apps.synthetic:app``,
whose FedAvg is known exactly) and the attacker, each logged in as its own broker user,
the coordinator with ``--verify-identity``. The attack is published right after version 1
commits, from this process. Measured:

- the federation: every version committed, each exactly the FedAvg of its honest updates
  (or, where the attacker's update is admitted, the documented capped result);
- the coordinator's peak RSS (VmHWM) against 200 MiB + 3x the model;
- cost: what the attacker spent (bytes published, CPU seconds of this process while it
  built and published the attack) against what the coordinator spent on it (CPU seconds
  beyond a run without attack, bytes it wrote to the DLQ).

    python bench/hostile.py                                  # every attack
    python bench/hostile.py --attacks bad-updates weight --rounds 4 --scale 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the attack table and the process harness are the tests'

from fedq import strict_json  # noqa: E402
from fedq.apps.synthetic import SyntheticApp  # noqa: E402
from fedq.messages.amqp import AmqpTransport  # noqa: E402
from fedq.messages.topology import Topology  # noqa: E402
from fedq.runtime.peak_memory import PeakRss  # noqa: E402
from tests.broker_users import broker_users  # noqa: E402
from tests.faults.harness import FaultyFederation  # noqa: E402
from tests.helpers import drain  # noqa: E402
from tests.hostile import attacks  # noqa: E402
from tests.hostile.attacks import ATTACKS, BY_NAME, Attack, Sent, Target  # noqa: E402
from tests.hostile.cases import NORM_BOUND  # noqa: E402

HONEST = 3
BOUND_MIB = 200
#: Seconds before a chunked update with no new chunk is refused (incomplete).
CHUNK_TIMEOUT = 5.0


@dataclass
class Run:
    attack: str
    klass: str
    versions: int
    #: "exact", "capped in N" (the attacker's update at its capped weight), or "WRONG ...".
    model: str
    coordinator_exit: int
    peak_mib: float
    coordinator_cpu_s: float
    attacker_cpu_s: float = 0.0
    attacker_messages: int = 0
    attacker_bytes: int = 0
    dlq_messages: int = 0
    dlq_bytes: int = 0
    #: Copies not made that the ledger records with why: past the attacker's
    #: --dead-letter-share of the queue (a flood leaves room for the others' evidence).
    without_copy: int = 0
    #: Ids the coordinator had to dead-letter, not in the DLQ, beyond those the ledger
    #: records as not copied: evidence lost.
    missing_evidence: int = 0
    #: Messages still on the updates and control queues once the coordinator exited.
    left_on_broker: int = 0
    #: Whether the attack was all published before the last version was committed.
    during_run: bool = True
    dlq_reasons: str = ""


def wait_with_cost(
    process: subprocess.Popen[bytes], peak: PeakRss, timeout: float
) -> tuple[int, float, float]:
    """Wait for ``process``: its exit code, its peak RSS in MiB and the CPU seconds it used
    (its rusage, from the kernel when it is reaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, code, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(code)
            peak.join(timeout=5)
            return process.returncode, peak.mib, usage.ru_utime + usage.ru_stime
        time.sleep(0.05)
    raise subprocess.TimeoutExpired(process.args, timeout)


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/hostile.py: no {what} in {timeout:.0f} s\n{logs()}")
        time.sleep(0.05)


def user_url(broker: str, user: tuple[str, str]) -> str:
    scheme, rest = broker.split("://", 1)
    return f"{scheme}://{user[0]}:{user[1]}@{rest.split('@', 1)[1]}"


def coordinator_args(attack: Attack | None, args: argparse.Namespace) -> list[str]:
    norm = NORM_BOUND if attack is None else attack.norm_bound
    out = ["--verify-identity", "--chunk-bytes", str(args.chunk_bytes)]
    out += ["--chunk-timeout", str(CHUNK_TIMEOUT)]
    return out + ([] if norm is None else ["--max-update-norm", str(norm)])


def attack_now(
    fed: FaultyFederation, attack: Attack, attacker: str, url: str, args: argparse.Namespace
) -> tuple[float, Sent]:
    """Publish ``attack`` right after a commit (so that updates aimed at the open version
    reach it); the CPU seconds this process spent building and publishing it."""
    version = fed.committed_version()
    wait_for(lambda: fed.committed_version() > version, 120, "commit", fed.logs)
    target = Target(
        federation=fed.name, url=url, attacker=attacker,
        model=SyntheticApp(params=args.params).initial_weights(),
        version=fed.committed_version(), chunk_bytes=args.chunk_bytes, scale=args.scale,
        keepalive_seconds=2 * CHUNK_TIMEOUT,
    )  # fmt: skip
    before = time.process_time()
    sent = asyncio.run(attack.publish(target))
    return time.process_time() - before, sent


def copies_not_made(fed: FaultyFederation) -> int:
    """Messages refused whose dead-letter copy the ledger records as not made, with why
    (``evidence.without_copy``: "no copy in the DLQ (...)" for one message, "N of M chunks
    not copied to the DLQ (...)" for a chunked update)."""
    rows = fed.ledger_rows(
        "SELECT detail FROM rejections WHERE detail LIKE 'no copy in the DLQ%' "
        "OR detail LIKE '% chunks not copied to the DLQ%'"
    )
    return sum(1 if d.startswith("no copy") else int(d.split()[0]) for (d,) in rows)


async def left_on_broker(fed: FaultyFederation) -> int:
    topology = Topology(fed.name)
    async with AmqpTransport(fed.broker) as transport:
        queues = (topology.updates, topology.coordinator)
        return sum([await transport.queue_depth(q) for q in queues])


def run(attack: Attack | None, args: argparse.Namespace, users: list[tuple[str, str]]) -> Run:
    """One federation under ``attack`` (None: the baseline)."""
    honest, attacker = users[:HONEST], users[HONEST]
    with tempfile.TemporaryDirectory(prefix="fedq-hostile-") as folder:
        fed = FaultyFederation(
            Path(folder), f"hostile-{uuid.uuid4().hex[:8]}", participants=HONEST,
            rounds=args.rounds, users=honest, params=args.params,
            coordinator_args=coordinator_args(attack, args),
            participant_args=["--delay", str(args.delay)],
        )  # fmt: skip
        try:
            coordinator = fed.start_coordinator("coordinator")
            peak_rss = PeakRss(coordinator.pid)
            participants = [fed.start_participant(i) for i in range(HONEST)]
            wait_for(lambda: fed.committed_version() >= 1, 120, "version 1", fed.logs)
            cpu, sent = 0.0, Sent()
            if attack is not None:
                url = user_url(fed.broker, attacker)
                cpu, sent = attack_now(fed, attack, attacker[0], url, args)
            during = fed.committed_version() < args.rounds
            code, peak, coordinator_cpu = wait_with_cost(coordinator, peak_rss, 900)
            for participant in participants:
                participant.wait(timeout=120)
            left = asyncio.run(left_on_broker(fed))
            dead = asyncio.run(drain(fed.broker, Topology(fed.name).rejected))
            without_copy = copies_not_made(fed)
            versions = attacks.check_versions(fed.state, [u for u, _ in honest], attack)
        finally:
            fed.close()
    if versions.committed < args.rounds or versions.wrong:
        model = f"WRONG: {versions.committed} versions, wrong {versions.wrong}"
    elif versions.with_attacker:
        model = f"capped in {len(versions.with_attacker)}"
    else:
        model = "exact"
    reasons = Counter(str(d.headers.get("x-fedq-reason", "")).split(":")[0] for d in dead)
    return Run(
        attack="(none)" if attack is None else attack.name,
        klass="" if attack is None else attack.klass,
        versions=versions.committed, model=model, coordinator_exit=code,
        peak_mib=round(peak, 1), coordinator_cpu_s=round(coordinator_cpu, 2),
        attacker_cpu_s=round(cpu, 2), attacker_messages=sent.messages,
        attacker_bytes=sent.bytes, dlq_messages=len(dead),
        dlq_bytes=sum(len(d.body) for d in dead),
        without_copy=without_copy,
        missing_evidence=max(
            0, len(sent.dead_lettered - {d.message_id for d in dead}) - without_copy
        ),
        left_on_broker=left, during_run=during,
        dlq_reasons=", ".join(f"{r} {n}" for r, n in reasons.most_common()),
    )  # fmt: skip


def figures(run: Run, baseline_cpu: float, bound_mib: float) -> dict[str, object]:
    """The run's figures, with what the coordinator spent beyond the baseline (the mean of
    the runs without attack) and the ratios of the coordinator's cost to the attacker's
    (None where the attacker spent nothing measurable)."""
    extra_cpu = run.coordinator_cpu_s - baseline_cpu
    cpu_ratio = extra_cpu / run.attacker_cpu_s if run.attacker_cpu_s > 0 else None
    bytes_ratio = run.dlq_bytes / run.attacker_bytes if run.attacker_bytes else None
    return asdict(run) | {
        "coordinator_extra_cpu_s": round(extra_cpu, 2),
        "cpu_ratio": None if cpu_ratio is None else round(cpu_ratio, 2),
        "dlq_bytes_ratio": None if bytes_ratio is None else round(bytes_ratio, 3),
        "within_memory_bound": run.peak_mib < bound_mib,
    }


def report(rows: list[dict[str, object]], bound_mib: float, console: Console) -> None:
    table = Table(title=f"3 honest participants and one attacker; memory bound {bound_mib:.0f} MiB")
    columns = {
        "attack": "attack", "klass": "class", "model": "honest model",
        "versions": "versions", "peak_mib": "coord. peak MiB",
        "attacker_messages": "attacker msgs", "attacker_bytes": "attacker bytes",
        "attacker_cpu_s": "attacker CPU s", "coordinator_extra_cpu_s": "coord. extra CPU s",
        "cpu_ratio": "coord./attacker CPU", "dlq_bytes": "DLQ bytes",
        "without_copy": "no copy, recorded", "missing_evidence": "evidence lost",
        "left_on_broker": "left on broker",
        "during_run": "during the run",
    }  # fmt: skip
    for title in columns.values():
        table.add_column(title, justify="left" if title in ("attack", "honest model") else "right")
    for row in rows:
        table.add_row(*(_cell(row[key]) for key in columns))
    console.print(table)
    for row in rows:
        console.print(f"{row['attack']}: DLQ reasons {row['dlq_reasons'] or '-'}")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", nargs="*", default=[a.name for a in ATTACKS],
                        help=f"of: {', '.join(BY_NAME)}")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--delay", type=float, default=2.0, help="seconds each round waits")
    parser.add_argument("--params", type=int, default=100_000, help="float32 model size")
    parser.add_argument("--chunk-bytes", type=int, default=1 << 16)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every flood")
    args = parser.parse_args()
    unknown = [name for name in args.attacks if name not in BY_NAME]
    if unknown:
        parser.error(f"unknown attack {unknown[0]!r}; known: {', '.join(BY_NAME)}")
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the attack comes after version 1")
    console = Console(width=200)
    bound_mib = BOUND_MIB + 3 * args.params * 4 / 2**20
    tag = uuid.uuid4().hex[:6]
    names = [f"h{tag}-{i}" for i in range(HONEST)] + [f"mallory-{tag}"]
    started = time.monotonic()
    with broker_users(names) as users:
        # A baseline first and last: the spread of the two is the noise of "extra CPU".
        runs = [run(None, args, users)]
        runs += [run(BY_NAME[name], args, users) for name in args.attacks]
        runs.append(run(None, args, users))
    baseline_cpu = (runs[0].coordinator_cpu_s + runs[-1].coordinator_cpu_s) / 2
    rows = [figures(r, baseline_cpu, bound_mib) for r in runs]
    report(rows, bound_mib, console)
    console.print(f"wall time {time.monotonic() - started:.0f} s, "
                  f"load average at end {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(strict_json.dumps({
        "bench": "hostile", "rounds": args.rounds, "params": args.params,
        "model_mib": round(args.params * 4 / 2**20, 2), "memory_bound_mib": round(bound_mib, 1),
        "honest": HONEST, "scale": args.scale, "baseline_cpu_s": round(baseline_cpu, 2),
        "runs": rows,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
