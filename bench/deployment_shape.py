"""The deployment shape of ``bench/round_overhead.py --processes``: every party its own process.

fedq runs as it is deployed: one ``fedq coordinator`` process and N ``fedq participant``
processes (``fedq.apps.synthetic:app``, ``FEDQ_SYNTHETIC_PARAMS`` = P), each with its own
broker connection. Seconds per round come from the coordinator's ledger (``versions``:
consecutive ``committed_at`` differences, median over rounds 2 and later, round 1 being
start-up). Phases come from the ledger (``opened_at``) and the participants' own log
lines (``FEDQ_LOG_LEVEL=DEBUG``: "sent its update on model vX", written once the update's
publish was confirmed, millisecond stamps).

The raw floor moves the same bytes in the same shape: N participant processes
(``multiprocessing`` spawn), each with one aio-pika connection, one confirm channel for its
update and one consumer channel (prefetch 1) on its own ``x-max-length: 1`` model queue,
and the coordinator side in this benchmark's process (one connection: a confirm channel for
the model, a consumer channel with prefetch max(2N, 16) on the updates queue). Separate
processes, not N connections in one process: otherwise the floor would pay for one Python
process doing every participant's I/O while fedq spreads it over N processes, and the
ratio would flatter fedq. The coordinator side stays in this process because during the
fedq run this process only polls the ledger: either way, one coordinator process and N
participant processes share the cores with the broker.

The floor's round is a closed loop, as fedq's: the coordinator publishes one persistent
model message (fanout to the N model queues); each participant, on its copy, acks it and
publishes one persistent update of fedq's update size; once the coordinator has consumed
and acked all N, the round ends and the next model goes out. The same messages per round as
the in-process floor of ``round_overhead.py`` (which starts a round with the updates), so
its seconds per round are the period of the loop, end to end, like fedq's commit to commit.

CPU seconds per round (the use from the end of round 1 to the end of the last, per round) are
read from ``/proc/<pid>/stat`` for the coordinator process, the N participant processes
together, and a local broker (``beam.smp``); with Erlang's busy-waiting the broker's figure
is an upper bound of its work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue as MpQueue
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from other_commit import InstalledCommit

from fedq.coordinator.checkpoint import checkpoint_path
from fedq.messages import body_frames
from fedq.messages.amqp import AmqpTransport
from fedq.messages.topology import Topology, UpdatesQueueType
from fedq.runtime.tuning import tune_process

APP = "fedq.apps.synthetic:app"
#: How often the ledger is polled for a new version (to stamp the processes' CPU clocks).
POLL_SECONDS = 0.025


def median_from_round_2(values: dict[int, float]) -> float:
    """Median of the values of rounds 2, 3, ... (round 1 includes start-up)."""
    kept = [v for round_, v in values.items() if round_ >= 2]
    return statistics.median(kept) if kept else float("nan")


def differences(stamps: dict[int, float]) -> dict[int, float]:
    """Round r's duration, stamps[r] - stamps[r - 1], for every r whose predecessor is known."""
    return {r: t - stamps[r - 1] for r, t in stamps.items() if r - 1 in stamps}


# ------------------------------------------------------------------------------ CPU clocks
def _stat_fields(stat: Path) -> list[str]:
    return stat.read_text().rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads); NaN once it is gone."""
    try:
        fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pids() -> list[int]:
    """Pids of a local RabbitMQ (Erlang ``beam.smp``); empty if the broker is remote."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if "(beam.smp)" in stat.read_text():
                found.append(int(stat.parent.name))
    return found


@dataclass(frozen=True)
class ShapeCpu:
    """CPU seconds of the coordinator process, the participant processes together, and the
    broker (NaN when not local)."""

    coordinator: float
    participants: float
    broker: float

    @property
    def total(self) -> float:
        return self.coordinator + self.participants + self.broker


@dataclass
class CpuClocks:
    """Reads the CPU clocks of one coordinator process, N participant processes and the broker."""

    coordinator: int
    participants: Sequence[int]
    broker: Sequence[int] = field(default_factory=broker_pids)

    def now(self) -> ShapeCpu:
        broker = sum(process_cpu_seconds(pid) for pid in self.broker) if self.broker else None
        return ShapeCpu(
            process_cpu_seconds(self.coordinator),
            sum(process_cpu_seconds(pid) for pid in self.participants),
            float("nan") if broker is None else broker,
        )


def cpu_per_round(at_round_end: dict[int, ShapeCpu]) -> ShapeCpu:
    """Each clock's use per round from round 2 on: its use from the end of round 1 to the
    end of the last round, over the rounds between. The clocks tick in 10 ms steps, so a
    median of single rounds' use could only say 60 or 70 ms; the whole span's mean
    resolves a few milliseconds, what a change of a round's CPU is made of."""
    first, last = 1, max(at_round_end, default=0)
    if first not in at_round_end or last <= first:
        nan = float("nan")
        return ShapeCpu(nan, nan, nan)
    start, end, rounds = at_round_end[first], at_round_end[last], last - first
    return ShapeCpu(
        (end.coordinator - start.coordinator) / rounds,
        (end.participants - start.participants) / rounds,
        (end.broker - start.broker) / rounds,
    )


# ------------------------------------------------------------------------------------ fedq
@dataclass(frozen=True)
class FedqProcessResult:
    seconds_per_round: float  # the ledger's committed_at, commit to commit
    commit_to_open: float  # previous commit -> this version opened (bookkeeping)
    open_to_first_sent: float  # model encode + publish + fanout, a participant's round trip
    open_to_last_sent: float  # ... until the N-th participant's update publish was confirmed
    last_sent_to_commit: float  # folds still to do, mean, apply, checkpoint, ledger
    cpu: ShapeCpu
    rejected: int
    startup_seconds: float  # coordinator started -> version 1 committed


def fedq_executable() -> str:
    """The ``fedq`` command next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "fedq"
    found = str(beside) if beside.exists() else shutil.which("fedq")
    if found is None:
        raise SystemExit("no `fedq` command next to this Python or on PATH: bash scripts/setup.sh")
    return found


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no output)"


class Ledger:
    """Read-only look at the coordinator's ledger while it runs (SQLite in WAL mode)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def last_version(self) -> int:
        """The newest committed version, 0 before the first (or before the ledger exists)."""
        if self._db is None:
            if not self.path.exists():
                return 0
            self._db = sqlite3.connect(self.path)
        try:
            row = self._db.execute("SELECT MAX(version) FROM versions").fetchone()
        except sqlite3.OperationalError:  # created, schema not written yet
            return 0
        return int(row[0] or 0)

    def stamps(self) -> tuple[dict[int, float], dict[int, float]]:
        """Each version's opened_at and committed_at (wall clock, seconds)."""
        assert self._db is not None, "no ledger was read"
        rows = self._db.execute("SELECT version, opened_at, committed_at FROM versions").fetchall()
        return {int(v): float(o) for v, o, _ in rows}, {int(v): float(c) for v, _, c in rows}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


SENT = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ DEBUG \S+ sent its update on model v(\d+)$"
)


def sent_stamps(logs: Sequence[Path]) -> dict[int, list[float]]:
    """Per committed version (base model + 1), when each participant's update publish was
    confirmed, from the participants' DEBUG log lines (local wall clock, ms)."""
    sent: dict[int, list[float]] = {}
    for path in logs:
        for text in path.read_text(errors="replace").splitlines():
            if match := SENT.match(text):
                at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                sent.setdefault(int(match[2]) + 1, []).append(at)
    return sent


async def _wait_exit(processes: Sequence[asyncio.subprocess.Process], limit: float) -> None:
    try:
        async with asyncio.timeout(limit):
            await asyncio.gather(*(p.wait() for p in processes))
    except TimeoutError:
        raise RuntimeError(
            f"fedq participants still running {limit:.0f} s after the coordinator"
        ) from None


#: py-spy's samples per second: enough to place 5 ms of a round, few enough not to slow it.
PY_SPY_RATE = 200


async def sampled_by_py_spy(pid: int, out: Path) -> asyncio.subprocess.Process:
    """py-spy sampling process ``pid`` until it exits, every thread, idle stacks included
    (a round's critical path is as much waiting as computing), without pausing it
    (``--nonblocking``), into ``out`` as collapsed stacks (``--format raw``: one line per
    stack and its count, for flamegraph tools and :mod:`bench.profile_summary`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        *(str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid)),
        *("--rate", str(PY_SPY_RATE), "--nonblocking", "--idle", "--threads", "--full-filenames"),
        *("--format", "raw", "--output", str(out)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def run_fedq_processes(
    url: str,
    n: int,
    params: int,
    rounds: int,
    queue_type: UpdatesQueueType,
    commit: InstalledCommit | None = None,
    profile: Path | None = None,
) -> FedqProcessResult:
    """One ``fedq coordinator`` and N ``fedq participant`` processes, quorum = N; of
    ``commit`` if given (``other_commit.py``), else of this checkout. With ``profile`` (a
    folder), each process is sampled by py-spy from its start to its exit
    (:func:`sampled_by_py_spy`)."""
    federation = f"bench-proc-{uuid.uuid4().hex[:8]}-{params}"
    fedq = fedq_executable() if commit is None else commit.command
    env = os.environ | {"FEDQ_SYNTHETIC_PARAMS": str(params), "FEDQ_BROKER_URL": url}
    env |= {} if commit is None else commit.env
    participants = [f"p{i}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="fedq-bench-proc-") as folder:
        state, logs = Path(folder) / "state", Path(folder) / "logs"
        logs.mkdir()
        report = Path(folder) / "report.json"
        ledger = Ledger(state / federation / "ledger.sqlite")
        children: list[asyncio.subprocess.Process] = []
        samplers: list[asyncio.subprocess.Process] = []

        async def start(name: str, args: list[str], extra: dict[str, str]) -> None:
            with (logs / f"{name}.log").open("wb") as out:
                child = await asyncio.create_subprocess_exec(
                    fedq, *args, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env | extra
                )
            children.append(child)
            if profile is not None:
                samplers.append(await sampled_by_py_spy(child.pid, profile / f"{name}.txt"))

        try:
            started = time.time()
            # The coordinator first, the participants once it declared its queues (the
            # participants' joins go to one) and saved model v0, so none is lost.
            await start(
                "coordinator",
                [
                    "coordinator",
                    *("--federation", federation, "--app", APP, "--broker", url),
                    *("--participants", str(n), "--quorum", str(n), "--rounds", str(rounds)),
                    *("--round-timeout", "600", "--linger", "0", "--updates-queue", queue_type),
                    *("--state-dir", str(state), "--report", str(report)),
                ],
                {},
            )
            coordinator = children[0]
            while not checkpoint_path(state / federation / "models", 0).exists():
                if coordinator.returncode is not None:
                    raise RuntimeError(
                        f"fedq coordinator exited ({coordinator.returncode}):\n"
                        + _tail(logs / "coordinator.log")
                    )
                await asyncio.sleep(POLL_SECONDS)
            for i, pid in enumerate(participants):
                await start(
                    pid,
                    [
                        "participant",
                        *("--federation", federation, "--app", APP, "--broker", url),
                        *("--id", pid, "--partition", f"{i}/{n}"),
                    ],
                    {"FEDQ_LOG_LEVEL": "DEBUG"},
                )
            clocks = CpuClocks(coordinator.pid, [p.pid for p in children[1:]])
            cpu = {0: clocks.now()}
            seen = 0
            while coordinator.returncode is None:
                await asyncio.sleep(POLL_SECONDS)
                if (last := ledger.last_version()) > seen:
                    now = clocks.now()  # within POLL_SECONDS of the commit
                    cpu |= dict.fromkeys(range(seen + 1, last + 1), now)
                    seen = last
                if any(p.returncode not in (None, 0) for p in children[1:]):
                    break  # the finally below stops the others
            if coordinator.returncode == 0:
                await _wait_exit(children[1:], 120.0)  # they leave on federation.done
            for name, child in zip(["coordinator", *participants], children, strict=True):
                if child.returncode not in (None, 0):
                    raise RuntimeError(
                        f"fedq {name} exited ({child.returncode}):\n" + _tail(logs / f"{name}.log")
                    )
            ledger.last_version()
            opened, committed = ledger.stamps()
            sent = sent_stamps([logs / f"{p}.log" for p in participants])
            rejected = int(json.loads(report.read_text())["updates_rejected"])
        finally:
            ledger.close()
            for child in children:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
            await _wait_exit(samplers, 60.0)  # each writes its profile as its process ends
            async with AmqpTransport(url) as transport:
                await Topology(federation, queue_type).delete(transport, participants)

    def phase(start: dict[int, float], end: dict[int, float], lag: int = 0) -> float:
        return median_from_round_2(
            {r: t - start[r - lag] for r, t in end.items() if r - lag in start}
        )

    first_sent = {v: min(times) for v, times in sent.items() if len(times) == n}
    last_sent = {v: max(times) for v, times in sent.items() if len(times) == n}
    return FedqProcessResult(
        seconds_per_round=median_from_round_2(differences(committed)),
        commit_to_open=phase(committed, opened, lag=1),
        open_to_first_sent=phase(opened, first_sent),
        open_to_last_sent=phase(opened, last_sent),
        last_sent_to_commit=phase(last_sent, committed),
        cpu=cpu_per_round(cpu),
        rejected=rejected,
        startup_seconds=committed.get(1, float("nan")) - started,
    )


# ------------------------------------------------------------------------------- raw floor
@dataclass(frozen=True)
class RawProcessResult:
    seconds_per_round: float  # the coordinator's round ends (all N updates acked), end to end
    end_to_publish: float  # previous round's end -> this round's model publish
    publish_to_first_model: float  # model publish -> first of the N copies consumed
    publish_to_last_model: float  # ... -> N-th copy consumed
    publish_to_last_update: float  # ... -> N-th update consumed and acked: the round's end
    publish_to_updates_confirmed: float  # ... -> every update publish confirmed
    model_confirmed: float  # model publish -> its confirm
    cpu: ShapeCpu  # coordinator = this process


def _persistent(body: bytes) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        message_id=str(uuid.uuid4()),
        content_type="application/x-msgpack",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


async def _wall_stamp(awaitable: Awaitable[object]) -> float:
    await awaitable
    return time.time()


Bodies = list[bytes]
"""A message as the bodies that carry it: one, or its chunks (each confirmed in turn)."""


@contextlib.contextmanager
def as_aio_pika_ships() -> Iterator[None]:
    """The raw floor measures aio-pika as it ships: fedq's own reading and writing of
    message bodies (:mod:`fedq.messages.body_frames`), which importing fedq's transport
    installs in this process, is taken out while the floor runs and put back after."""
    body_frames.uninstall()
    try:
        yield
    finally:
        body_frames.install()


def raw_participant(
    url: str,
    index: int,
    updates: str,
    model_queue: str,
    bodies: Bodies,
    model_chunks: int,
    rounds: int,
    ready: MpQueue[int],
    results: MpQueue[tuple[int, list[float], list[float]]],
) -> None:
    """A floor participant process: on each model copy (``model_chunks`` messages), ack
    it and publish one update (``bodies``, each confirmed before the next). Reports
    (index, model copies consumed at, update publishes confirmed at)."""
    tune_process()  # as the fedq CLI does at start
    body_frames.uninstall()  # aio-pika as it ships (see as_aio_pika_ships)
    received, confirmed = asyncio.run(
        _raw_participant(url, index, updates, model_queue, bodies, model_chunks, rounds, ready)
    )
    results.put((index, received, confirmed))


async def _publish_all(exchange: Any, bodies: Bodies, routing_key: str) -> None:
    for body in bodies:
        await exchange.publish(_persistent(body), routing_key)


async def _raw_participant(
    url: str,
    index: int,
    updates: str,
    model_queue: str,
    bodies: Bodies,
    model_chunks: int,
    rounds: int,
    ready: MpQueue[int],
) -> tuple[list[float], list[float]]:
    connection = await aio_pika.connect_robust(url)
    try:
        publishing = await connection.channel(publisher_confirms=True)
        exchange = await publishing.get_exchange(updates, ensure=False)
        consuming = await connection.channel()
        await consuming.set_qos(prefetch_count=1)
        arrived: asyncio.Queue[float] = asyncio.Queue()
        chunks_seen = 0

        async def on_model(message: AbstractIncomingMessage) -> None:
            nonlocal chunks_seen
            await message.ack()
            chunks_seen += 1
            if chunks_seen % model_chunks == 0:
                arrived.put_nowait(time.time())

        await (await consuming.get_queue(model_queue, ensure=False)).consume(on_model)
        ready.put(index)
        received: list[float] = []
        pending = []
        for _ in range(rounds):
            received.append(await arrived.get())
            pending.append(
                asyncio.create_task(_wall_stamp(_publish_all(exchange, bodies, "update")))
            )
        confirmed = list(await asyncio.gather(*pending))
        await consuming.close()
        await publishing.close()
    finally:
        await connection.close()
    return received, confirmed


async def _collect(
    source: MpQueue[Any], processes: Sequence[BaseProcess], count: int, limit: float
) -> list[Any]:
    """``count`` items from ``source``; fails at once if a process died without sending."""
    items: list[Any] = []
    deadline = time.monotonic() + limit
    while len(items) < count:
        try:
            items.append(await asyncio.to_thread(source.get, True, 0.5))
        except queue.Empty:
            if dead := [p.name for p in processes if p.exitcode not in (None, 0)]:
                raise RuntimeError(f"raw floor participant(s) {dead} failed") from None
            if time.monotonic() > deadline:
                raise RuntimeError("raw floor participants did not answer in time") from None
    return items


@dataclass
class _Countdown:
    """Set ``done`` (and stamp ``at``, wall clock) once ``count`` messages were acked."""

    count: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    at: float = float("nan")

    async def acked(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        self.count -= 1
        if self.count == 0:
            self.at = time.time()
            self.done.set()


async def declare_raw_topology(
    connection: AbstractRobustConnection,
    updates: str,
    models: str,
    model_queues: Sequence[str],
    queue_type: str,
    model_bound: dict[str, int] | None = None,
) -> None:
    """The raw floor's topology (both shapes): a direct updates exchange bound to one
    durable queue of ``queue_type``, and a fanout models exchange feeding one
    ``x-max-length: 1`` drop-head queue per participant, as fedq's topology has them
    (``model_bound`` replaces the length bound, e.g. by bytes for chunked models)."""
    channel = await connection.channel()
    update_exchange = await channel.declare_exchange(
        updates, aio_pika.ExchangeType.DIRECT, durable=True
    )
    update_queue = await channel.declare_queue(
        updates, durable=True, arguments={"x-queue-type": queue_type}
    )
    await update_queue.bind(update_exchange, routing_key="update")
    model_exchange = await channel.declare_exchange(
        models, aio_pika.ExchangeType.FANOUT, durable=True
    )
    for name in model_queues:
        queue_ = await channel.declare_queue(
            name,
            durable=True,
            arguments={**(model_bound or {"x-max-length": 1}), "x-overflow": "drop-head"},
        )
        await queue_.bind(model_exchange)
    await channel.close()


async def _delete_raw(
    connection: AbstractRobustConnection, queues: Sequence[str], exchanges: Sequence[str]
) -> None:
    channel = await connection.channel()
    for name in queues:
        await channel.queue_delete(name)
    for name in exchanges:
        await channel.exchange_delete(name)
    await channel.close()


async def run_raw_processes(
    url: str,
    n: int,
    update_body: bytes | Bodies,
    model_body: bytes | Bodies,
    rounds: int,
    queue_type: str,
) -> RawProcessResult:
    """The floor in the deployment shape: N participant processes, one connection each.
    A model or update given as several bodies (chunks) goes as those messages in turn."""
    update_bodies = [update_body] if isinstance(update_body, bytes) else update_body
    model_bodies = [model_body] if isinstance(model_body, bytes) else model_body
    with as_aio_pika_ships():
        return await _run_raw_processes(url, n, update_bodies, model_bodies, rounds, queue_type)


async def _run_raw_processes(
    url: str, n: int, update_bodies: Bodies, model_bodies: Bodies, rounds: int, queue_type: str
) -> RawProcessResult:
    chunked = len(model_bodies) > 1
    bound = {"x-max-length-bytes": 2 * sum(map(len, model_bodies))} if chunked else None
    prefix = f"fedq-bench-rawproc-{uuid.uuid4().hex[:12]}"
    updates, models = f"{prefix}.updates", f"{prefix}.models"
    model_queues = [f"{prefix}.model.p{i}" for i in range(n)]
    context = multiprocessing.get_context("spawn")  # no forked copy of a running event loop
    ready: MpQueue[int] = context.Queue()
    results: MpQueue[tuple[int, list[float], list[float]]] = context.Queue()
    processes = [
        context.Process(
            target=raw_participant,
            args=(
                url,
                i,
                updates,
                model_queues[i],
                update_bodies,
                len(model_bodies),
                rounds,
                ready,
                results,
            ),
            name=f"raw-p{i}",
            daemon=True,
        )
        for i in range(n)
    ]
    connection = await aio_pika.connect_robust(url)
    try:
        await declare_raw_topology(connection, updates, models, model_queues, queue_type, bound)
        for process in processes:
            process.start()
        await _collect(ready, processes, n, limit=300.0)
        pids = [p.pid for p in processes if p.pid is not None]
        ends, cpu, publishes, model_confirms = await _raw_coordinator(
            connection,
            updates,
            models,
            model_bodies,
            n * len(update_bodies),
            rounds,
            CpuClocks(os.getpid(), pids),
        )
        reports = await _collect(results, processes, n, limit=120.0)
        for process in processes:
            await asyncio.to_thread(process.join, 30.0)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()
        await _delete_raw(connection, [updates, *model_queues], [updates, models])
        await connection.close()

    def per_round(stamps: Callable[[int], float], start: dict[int, float]) -> float:
        return median_from_round_2({r: stamps(r) - start[r] for r in start})

    received = [row[1] for row in reports]  # [participant][round - 1]
    confirmed = [row[2] for row in reports]
    return RawProcessResult(
        seconds_per_round=median_from_round_2(differences(ends)),
        end_to_publish=median_from_round_2(
            {r: t - ends[r - 1] for r, t in publishes.items() if r - 1 in ends}
        ),
        publish_to_first_model=per_round(lambda r: min(p[r - 1] for p in received), publishes),
        publish_to_last_model=per_round(lambda r: max(p[r - 1] for p in received), publishes),
        publish_to_last_update=per_round(lambda r: ends[r], publishes),
        publish_to_updates_confirmed=per_round(
            lambda r: max(p[r - 1] for p in confirmed), publishes
        ),
        model_confirmed=per_round(lambda r: model_confirms[r], publishes),
        cpu=cpu_per_round(cpu),
    )


async def _raw_coordinator(
    connection: AbstractRobustConnection,
    updates: str,
    models: str,
    model_bodies: Bodies,
    messages: int,
    rounds: int,
    clocks: CpuClocks,
) -> tuple[dict[int, float], dict[int, ShapeCpu], dict[int, float], dict[int, float]]:
    """The floor's coordinator side: per round, publish the model (fanout, each body
    confirmed in turn) and consume ``messages`` update messages. Returns each round's end,
    CPU clocks at the end, model publish start and model confirm (wall clock)."""
    publishing = await connection.channel(publisher_confirms=True)
    exchange = await publishing.get_exchange(models, ensure=False)
    consuming = await connection.channel()
    await consuming.set_qos(prefetch_count=min(max(2 * messages, 16), 64))
    countdown = _Countdown(0)

    async def on_update(message: AbstractIncomingMessage) -> None:
        await countdown.acked(message)

    await (await consuming.get_queue(updates, ensure=False)).consume(on_update)
    ends: dict[int, float] = {}
    cpu = {0: clocks.now()}
    publishes: dict[int, float] = {}
    confirms: dict[int, float] = {}
    try:
        for round_ in range(1, rounds + 1):
            countdown = _Countdown(messages)
            publishes[round_] = time.time()
            confirm = asyncio.create_task(_wall_stamp(_publish_all(exchange, model_bodies, "")))
            await countdown.done.wait()
            ends[round_] = countdown.at
            cpu[round_] = clocks.now()
            confirms[round_] = await confirm
    finally:
        await consuming.close()
        await publishing.close()
    return ends, cpu, publishes, confirms
