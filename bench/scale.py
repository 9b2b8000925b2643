"""Many participants: rounds per minute and peak memory with N virtual participants.

    python bench/scale.py --participants 100 1000 --params 100000 --rounds 5 \
        --broker amqp://guest:guest@127.0.0.1:5672/ [--against REV --pairs 3]

``--against REV`` runs commit REV too (installed apart, ``other_commit.py``), taking turns
with this checkout, and prints each pair's ratio of seconds per round (REV's over this
checkout's: above 1, this checkout is faster) and of the coordinator's CPU seconds.

For each N and P (float32 parameters), on the real broker, as deployed: one
``fedq coordinator`` process and ONE ``fedq participant --count N`` process holding the N
virtual participants (``fedq.apps.synthetic:app``, ``FEDQ_SYNTHETIC_PARAMS`` = P), quorum
mode with K = N / 10 (``--quorum-fraction``), so N - K updates of each round arrive after
it closed and are refused as stale.

Reported per run:

- rounds per minute: 60 / the median of the rounds' seconds (a round's model published ->
  its version committed, from the coordinator's report), from round 2 on (round 1 includes
  the N joins); and the first round's seconds apart;
- peak RSS (``ru_maxrss`` of each child, exact) of the coordinator process and of the
  participant process, and the coordinator's ratio from the smallest to the largest N at
  each P;
- CPU seconds per round of the coordinator, the participant process and a local broker
  (``beam.smp`` in /proc): with 2 cores shared by other work the rounds' seconds vary with
  the machine's load, the CPU seconds much less;
- the participant process's connections and its most channels seen at once (management
  API, by the connection name ``fedq pid <pid>``; RabbitMQ refreshes channel counts every
  few seconds, so the figure is a sample), and the model queues left after the run (each
  virtual participant deletes its own);
- the stale updates refused. Each is copied to the dead-letter queue, (N - K) x update size
  per round; to keep the broker from storing gigabytes of them, the benchmark caps its own
  federations' DLQs with a policy (``max-length`` 100, the oldest dropped), removed at the
  end. An operator running N >> K wants the same (docs/operations.md, "Many participants").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from deployment_shape import fedq_executable
from other_commit import InstalledCommit, installed_commit
from rich.console import Console
from rich.table import Table

from fedq import strict_json
from fedq.coordinator.checkpoint import checkpoint_path
from fedq.management import default_management_url
from fedq.messages.amqp import DEFAULT_BROKER_URL, redact
from fedq.teardown import teardown

APP = "fedq.apps.synthetic:app"
POLL_SECONDS = 0.5
#: Policy name and the pattern of this benchmark's federations' dead-letter queues.
DLQ_POLICY = "fedq-bench-scale-dlq"
PREFIX = "scale-"


@dataclass
class Child:
    """A child process and its resource use, known once it exited."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    returncode: int | None = None
    maxrss_kb: int = 0
    cpu_seconds: float = 0.0

    def poll(self) -> bool:
        """True once exited (then returncode, maxrss_kb and cpu_seconds are set)."""
        if self.returncode is not None:
            return True
        pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.process.returncode = self.returncode = os.waitstatus_to_exitcode(status)
        self.maxrss_kb = usage.ru_maxrss  # kilobytes on Linux
        self.cpu_seconds = usage.ru_utime + usage.ru_stime
        return True

    def stop(self) -> None:
        if self.returncode is None:
            self.process.kill()
            while not self.poll():
                time.sleep(0.05)

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no output)"


@dataclass
class Run:
    participants: int
    params: int
    quorum: int
    rounds: int
    rounds_per_minute: float
    median_round_seconds: float
    first_round_seconds: float
    wall_seconds: float
    coordinator_rss_mb: float
    participants_rss_mb: float
    coordinator_cpu_per_round: float
    participants_cpu_per_round: float
    broker_cpu_per_round: float
    participant_connections: int
    participant_channels_max: int
    model_queues_left: int
    stale_refused: int
    update_bytes: int


def broker_cpu_seconds() -> float:
    """User + system CPU seconds of a local RabbitMQ (``beam.smp``) so far; NaN if none."""
    ticks, found = 0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            if "(beam.smp)" in text:
                fields = text.rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
                found = True
    return ticks / os.sysconf("SC_CLK_TCK") if found else float("nan")


class Management:
    """The few management API calls this benchmark makes (sync: it polls between waits)."""

    def __init__(self, url: str, broker_url: str) -> None:
        broker = urllib.parse.urlsplit(broker_url)
        self.client = httpx.Client(
            base_url=url.rstrip("/") + "/api",
            auth=(urllib.parse.unquote(broker.username or "guest"),
                  urllib.parse.unquote(broker.password or "guest")),
            timeout=10.0,
        )  # fmt: skip
        self.vhost = urllib.parse.quote(urllib.parse.unquote(broker.path[1:] or "/"), safe="")

    def connections_named(self, name: str) -> list[dict[str, Any]]:
        response = self.client.get(
            "/connections", params={"columns": "name,channels,client_properties"}
        )
        response.raise_for_status()
        found = response.json()
        return [c for c in found if c.get("client_properties", {}).get("connection_name") == name]

    def queues_named(self, prefix: str) -> list[str]:
        response = self.client.get(f"/queues/{self.vhost}", params={"columns": "name"})
        response.raise_for_status()
        return [q["name"] for q in response.json() if q["name"].startswith(prefix)]

    def cap_dead_letters(self) -> None:
        pattern = rf"^fedq\.{PREFIX}[0-9a-f]+-.*\.rejected$"
        policy = {"pattern": pattern, "definition": {"max-length": 100}, "apply-to": "queues"}
        self.client.put(f"/policies/{self.vhost}/{DLQ_POLICY}", json=policy).raise_for_status()

    def uncap_dead_letters(self) -> None:
        self.client.delete(f"/policies/{self.vhost}/{DLQ_POLICY}")


def run_once(
    args: argparse.Namespace,
    management: Management,
    n: int,
    params: int,
    folder: Path,
    commit: InstalledCommit | None = None,
) -> Run:
    """One federation of ``n`` participants, with this checkout's ``fedq`` or ``commit``'s."""
    federation = f"{PREFIX}{uuid.uuid4().hex[:8]}-{n}-{params}"
    quorum = args.quorum or max(1, round(n * args.quorum_fraction))
    fedq = fedq_executable() if commit is None else commit.command
    env = os.environ | {"FEDQ_SYNTHETIC_PARAMS": str(params), "FEDQ_BROKER_URL": args.broker}
    env |= {} if commit is None else commit.env
    state, report = folder / "state", folder / f"{federation}.json"
    children: list[Child] = []

    def start(name: str, *command: str) -> Child:
        log = folder / f"{federation}-{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [fedq, *command], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        children.append(Child(name, process, log))
        return children[-1]

    broker_before = broker_cpu_seconds()
    started = time.monotonic()
    try:
        coordinator = start(
            "coordinator",
            "coordinator",
            *("--federation", federation, "--app", APP, "--broker", args.broker),
            *("--participants", str(n), "--quorum", str(quorum), "--rounds", str(args.rounds)),
            *("--round-timeout", "600", "--linger", "10"),
            *("--state-dir", str(state), "--report", str(report)),
        )
        # The participants once the coordinator declared its queues and saved model v0.
        while not checkpoint_path(state / federation / "models", 0).exists():
            if coordinator.poll():
                raise RuntimeError(f"fedq coordinator exited:\n{coordinator.tail()}")
            time.sleep(POLL_SECONDS / 5)
        participants = start(
            "participants",
            "participant",
            *("--federation", federation, "--app", APP, "--broker", args.broker),
            *("--id", "v", "--count", str(n), "--partition", f"0/{n}"),
        )
        name = f"fedq pid {participants.process.pid}"
        connections, channels = 0, 0
        while not (coordinator.poll() and participants.poll()):
            if time.monotonic() - started > args.timeout:
                raise RuntimeError(f"N={n}, P={params}: not done within {args.timeout:.0f} s")
            if participants.returncode not in (None, 0) or coordinator.returncode not in (None, 0):
                break
            if participants.returncode is None:
                with contextlib.suppress(httpx.HTTPError):
                    found = management.connections_named(name)
                    connections = max(connections, len(found))
                    channels = max(channels, *(int(c.get("channels", 0)) for c in found), 0)
            time.sleep(POLL_SECONDS)
        wall = time.monotonic() - started
        broker_cpu = broker_cpu_seconds() - broker_before
        for child in children:
            if child.returncode not in (None, 0):
                raise RuntimeError(
                    f"fedq {child.name} exited ({child.returncode}):\n{child.tail()}"
                )
        left = len(management.queues_named(f"fedq.{federation}.model."))
    finally:
        for child in children:
            child.stop()
        with contextlib.suppress(Exception):
            asyncio.run(teardown(federation, args.broker, args.management_url, force=True))

    result = json.loads(report.read_text())
    seconds = [float(h["seconds"]) for h in result["history"]]
    median = statistics.median(seconds[1:] or seconds)
    rounds, last = len(seconds), result["history"][-1]
    return Run(
        participants=n,
        params=params,
        quorum=quorum,
        rounds=rounds,
        rounds_per_minute=60.0 / median,
        median_round_seconds=median,
        first_round_seconds=seconds[0],
        wall_seconds=wall,
        coordinator_rss_mb=coordinator.maxrss_kb / 1024,
        participants_rss_mb=participants.maxrss_kb / 1024,
        coordinator_cpu_per_round=coordinator.cpu_seconds / rounds,
        participants_cpu_per_round=participants.cpu_seconds / rounds,
        broker_cpu_per_round=broker_cpu / rounds,
        participant_connections=connections,
        participant_channels_max=channels,
        model_queues_left=left,
        stale_refused=int(result["rejected_by_reason"].get("stale", 0)),
        update_bytes=int(last["update_bytes"]) // max(1, int(last["n_updates"])),
    )


def run_pairs(
    args: argparse.Namespace,
    management: Management,
    n: int,
    params: int,
    folder: Path,
    other: InstalledCommit,
    console: Console,
) -> list[tuple[Run, Run]]:
    """``args.pairs`` runs of this checkout and of ``other``, taking turns (who goes first
    alternates too), so that both meet the same machine."""
    pairs = []
    for pair in range(args.pairs):
        this_first = pair % 2 == 0
        ran: dict[bool, Run] = {}
        for this in (this_first, not this_first):
            ran[this] = run_once(args, management, n, params, folder, None if this else other)
        console.print(
            f"  pair {pair + 1}: s/round this {ran[True].median_round_seconds:.2f}, "
            f"{other.sha[:8]} {ran[False].median_round_seconds:.2f}"
        )
        pairs.append((ran[True], ran[False]))
    return pairs


def comparison(other: InstalledCommit, pairs: list[tuple[Run, Run]]) -> dict[str, Any]:
    """Each pair's ratios, the other commit over this checkout: above 1, this is faster."""
    round_ratios = [o.median_round_seconds / t.median_round_seconds for t, o in pairs]
    return {
        "commit": other.sha,
        "participants": pairs[0][0].participants,
        "params": pairs[0][0].params,
        "this_round_seconds": [t.median_round_seconds for t, _ in pairs],
        "other_round_seconds": [o.median_round_seconds for _, o in pairs],
        "round_ratios": round_ratios,
        "median_round_ratio": statistics.median(round_ratios),
        "coordinator_cpu_ratios": [
            o.coordinator_cpu_per_round / t.coordinator_cpu_per_round for t, o in pairs
        ],
    }


def ratios(runs: list[Run]) -> dict[str, float]:
    """Per P: the coordinator's peak RSS at the largest N over the smallest N."""
    out = {}
    for params in sorted({r.params for r in runs}):
        at = sorted((r for r in runs if r.params == params), key=lambda r: r.participants)
        if len(at) > 1:
            small, large = at[0], at[-1]
            key = f"coordinator_rss_ratio_{large.participants}_vs_{small.participants}_p{params}"
            out[key] = large.coordinator_rss_mb / small.coordinator_rss_mb
    return out


def report(runs: list[Run], console: Console) -> None:
    table = Table(title="N virtual participants in one process, quorum mode")
    # part: the participant process; chans: its most channels seen at once
    for column in (
        "N", "P", "K", "rounds/min", "round 1 s", "RSS MB coord", "RSS MB part",
        "CPU s/round coord/part/broker", "conns", "chans", "queues left", "stale",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for r in runs:
        table.add_row(
            f"{r.participants:,}", f"{r.params:,}", str(r.quorum),
            f"{r.rounds_per_minute:.1f}", f"{r.first_round_seconds:.1f}",
            f"{r.coordinator_rss_mb:.0f}", f"{r.participants_rss_mb:.0f}",
            f"{r.coordinator_cpu_per_round:.1f} / {r.participants_cpu_per_round:.1f} / "
            f"{r.broker_cpu_per_round:.1f}",
            str(r.participant_connections), str(r.participant_channels_max),
            str(r.model_queues_left), f"{r.stale_refused:,}",
        )  # fmt: skip
    console.print(table)
    for key, value in ratios(runs).items():
        console.print(f"{key}: {value:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--params", type=int, nargs="+", default=[100_000])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per run (>= 2)")
    parser.add_argument("--quorum-fraction", type=float, default=0.1, help="K = N x this")
    parser.add_argument("--quorum", type=int, default=None, help="a fixed K instead")
    parser.add_argument("--broker", default=DEFAULT_BROKER_URL)
    parser.add_argument("--management-url", default=None, help="default: the broker's host")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also run commit REV (installed apart), alternating with this checkout",
    )
    parser.add_argument("--pairs", type=int, default=3, help="pairs of runs with --against")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: round 1 includes the joins")
    args.management_url = args.management_url or default_management_url(args.broker)
    console = Console(width=180)
    load = os.getloadavg()
    console.print(
        f"RabbitMQ at {redact(args.broker)}; {os.cpu_count()} CPU cores shared by the "
        f"coordinator, the participant process, the broker and whatever else runs "
        f"(load average at start {load[0]:.1f})"
    )
    management = Management(args.management_url, args.broker)
    management.cap_dead_letters()
    runs: list[Run] = []
    compared: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedq-scale-")))
            other = stack.enter_context(installed_commit(args.against)) if args.against else None
            for params in args.params:
                for n in args.participants:
                    console.print(f"N = {n:,}, P = {params:,} ...")
                    if other is None:
                        runs.append(run_once(args, management, n, params, folder))
                        continue
                    pairs = run_pairs(args, management, n, params, folder, other, console)
                    runs.extend(this for this, _ in pairs)
                    compared.append(comparison(other, pairs))
    finally:
        management.uncap_dead_letters()
    report(runs, console)
    for row in compared:
        console.print(
            f"N = {row['participants']:,}, P = {row['params']:,}: seconds per round, commit "
            f"{row['commit'][:8]} over this checkout, pair by pair: "
            + ", ".join(f"{r:.2f}" for r in row["round_ratios"])
            + f" (median {row['median_round_ratio']:.2f}); coordinator CPU s per round: "
            + ", ".join(f"{r:.2f}" for r in row["coordinator_cpu_ratios"])
        )
    wall = time.perf_counter() - started
    console.print(f"wall time {wall:.0f} s, load average at end {os.getloadavg()[0]:.1f}")
    figures = {
        "bench": "scale",
        "rounds": args.rounds,
        "quorum_fraction": None if args.quorum else args.quorum_fraction,
        "quorum": args.quorum,
        "cpu_cores": os.cpu_count(),
        "load_average_end": os.getloadavg()[0],
        "wall_seconds": wall,
        "runs": [asdict(r) for r in runs],
        "against": compared,
        **ratios(runs),
    }
    print(strict_json.dumps(figures))


if __name__ == "__main__":
    main()
