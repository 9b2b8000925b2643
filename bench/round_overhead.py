"""Seconds per round of fedq on RabbitMQ next to a raw aio-pika floor that moves the same bytes.

    python bench/round_overhead.py --participants 10 --params 1000000 10000000 --rounds 6 \
        --broker amqp://guest:guest@127.0.0.1:5672/ [--processes [--floor-pairs K]
        [--against REV --pairs 3] [--profile DIR]]

``--floor-pairs K`` runs the deployment shape and its floor K times each, in alternating
pairs (the floor first in the first pair, fedq in the second, ...), and reports the median
of the K ratios: on 2 shared cores one pair's ratio spread from 1.06x to 1.63x in a
sitting at 10M (bench/README.md, "Where a round's time goes"), so a single pair says
little, and a machine that drifts during the run weighs on both sides alike.

``--against REV`` runs the deployment shape of commit REV too (``other_commit.py``), in
alternating pairs with this checkout, and reports this checkout's round time over REV's per
pair: a regression shows in one command, on one machine in one sitting. ``--profile DIR``
samples every process of the deployment shape with py-spy (``bench/profile_summary.py``
says where each one's time went); with ``--against``, also the first pair's two runs, so
that both commits' profiles come from one run.

Two shapes, each against its own floor measured in the same run:

- ``--processes``, the deployment shape (``deployment_shape.py`` says how): a ``fedq
  coordinator`` process and N ``fedq participant`` processes, one connection each, against
  a floor of N participant processes with one aio-pika connection each. Reported first.
- the simulation shape (always): every participant on one connection in this process.

For each parameter count P (float32), in one run on the real broker, the simulation shape:

- fedq: ``fedq.simulation.simulate`` of N participants with ``fedq.apps.synthetic``
  (``SyntheticApp(params=P)``), quorum = N (every update required each round). A round
  lasts from one commit to the next (an observer stamps each commit); reported is the
  median over rounds 2 and later, with the median of its phases.
- raw floor: plain aio-pika doing what a fedq round does on the wire, nothing else. Per
  round, N concurrent publishers (one confirm channel on the "participants" connection,
  as fedq's transport) each publish one persistent update of fedq's update body size to a
  direct exchange bound to one durable queue; one consumer on the "coordinator"
  connection acks each; once all N arrived, one persistent model message of fedq's model
  body size is published (with confirms) to a fanout exchange bound to N durable queues
  (``x-max-length: 1``, ``x-overflow: drop-head``), each consumed and acked by its own
  consumer. A round lasts from the first update publish until all N model copies were
  consumed and every publish was confirmed. Median over rounds 2 and later.
- CPU seconds per round of this process (all threads) and of a local broker (``beam.smp``
  in /proc), for both: on a small machine they share the cores.
- CPU parts of one round, single-threaded on warm buffers, no broker: update encode,
  decode + validation, N accumulator folds, mean + apply, checkpoint save, model encode,
  and the participant side (model decode + copy, train, delta, encode), to compare with the
  round time; for an update sent as chunks, also the coordinator's intake and spool of its
  chunks and its fold from the spool (``chunked_path.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import numpy as np
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection
from chunked_path import ChunkedPath, chunked_path_seconds
from deployment_shape import (
    FedqProcessResult,
    RawProcessResult,
    ShapeCpu,
    as_aio_pika_ships,
    declare_raw_topology,
    run_fedq_processes,
    run_raw_processes,
)
from other_commit import InstalledCommit, installed_commit
from timing import median_seconds

from fedq import strict_json
from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import save_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.intake import check_tensors
from fedq.coordinator.observers import CoordinatorObserver, UpdateSeen
from fedq.coordinator.records import VersionSummary
from fedq.coordinator.strategies import Aggregation, AggregationContext
from fedq.coordinator.strategies.early_mean import WeightedMean
from fedq.coordinator.strategies.fedavg import FedAvg
from fedq.messages.amqp import DEFAULT_BROKER_URL, AmqpTransport, redact
from fedq.messages.chunks import DEFAULT_CHUNK_BYTES, encode_chunks
from fedq.messages.codec import Weights, decode_message, encode_message, spec_of
from fedq.messages.schema import ModelMeta, UpdateMeta
from fedq.messages.topology import Topology, UpdatesQueueType
from fedq.participant.app import Partition, TrainConfig
from fedq.participant.config import ParticipantConfig
from fedq.runtime.tuning import tune_process
from fedq.simulation import SimulationPlan, participant_configs, simulate


def median_from_round_2(durations: dict[int, float]) -> float:
    """Median of the durations of rounds 2, 3, ... (round 1 includes warm-up)."""
    values = [seconds for round_, seconds in durations.items() if round_ >= 2]
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------------------ CPU clocks
@functools.cache
def _broker_stat_files() -> tuple[Path, ...]:
    """/proc stat files of a local RabbitMQ (Erlang ``beam.smp``); empty if it is remote."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if "(beam.smp)" in stat.read_text():
                found.append(stat)
    return tuple(found)


def broker_cpu_seconds() -> float:
    """User + system CPU seconds a local broker used so far; NaN if none is found."""
    ticks = 0
    files = _broker_stat_files()
    for stat in files:
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK") if files else float("nan")


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds of this Python process (all threads) and of the broker."""

    python: float
    broker: float

    @classmethod
    def now(cls) -> CpuUse:
        return cls(time.process_time(), broker_cpu_seconds())

    @classmethod
    def per_round(cls, at_round_end: dict[int, CpuUse]) -> CpuUse:
        """Median from round 2 of the CPU used between consecutive round ends."""
        rounds = [r for r in at_round_end if r - 1 in at_round_end]
        return cls(
            median_from_round_2(
                {r: at_round_end[r].python - at_round_end[r - 1].python for r in rounds}
            ),
            median_from_round_2(
                {r: at_round_end[r].broker - at_round_end[r - 1].broker for r in rounds}
            ),
        )


# ------------------------------------------------------------------------------------ fedq
@dataclass
class CommitClock(CoordinatorObserver):
    """A CoordinatorObserver that stamps time.perf_counter() at each round's events."""

    opened: dict[int, float] = field(default_factory=dict)
    first_update: dict[int, float] = field(default_factory=dict)
    last_update: dict[int, float] = field(default_factory=dict)
    committed: dict[int, float] = field(default_factory=dict)
    cpu: dict[int, CpuUse] = field(default_factory=dict)
    rejected: int = 0
    _round: int = 0

    def version_opened(self, version: int, round_: int | None) -> None:
        self._round = version + 1
        self.opened[self._round] = time.perf_counter()

    def update_seen(self, update: UpdateSeen) -> None:
        if not update.accepted:
            self.rejected += 1
            return
        now = time.perf_counter()
        self.first_update.setdefault(self._round, now)
        self.last_update[self._round] = now

    def version_committed(self, row: VersionSummary) -> None:
        self.committed[row.version] = time.perf_counter()
        self.cpu[row.version] = CpuUse.now()

    def between(self, start: dict[int, float], end: dict[int, float], lag: int = 0) -> float:
        """Median over rounds r >= 2 of end[r] - start[r - lag]."""
        return median_from_round_2(
            {r: t - start[r - lag] for r, t in end.items() if r - lag in start}
        )


@dataclass
class FedqResult:
    seconds_per_round: float
    commit_to_open: float  # model encode + round.open + model publish (confirmed)
    open_to_first_fold: float  # participants: model in, train, delta out; first fold done
    first_to_last_fold: float  # the other N-1 updates received, validated, folded
    last_fold_to_commit: float  # mean, apply, checkpoint, ledger, acks, round.closed
    history_seconds: float  # the ledger's commit minus open time, median from round 2
    cpu: CpuUse
    rejected: int


async def run_fedq(
    url: str, n: int, params: int, rounds: int, queue_type: UpdatesQueueType
) -> FedqResult:
    federation = f"bench-{uuid.uuid4().hex[:8]}-{params}"
    clock = CommitClock()
    with tempfile.TemporaryDirectory(prefix="fedq-bench-") as state:
        plan = SimulationPlan(
            coordinator=CoordinatorConfig(
                federation=federation,
                participants=n,
                rounds=rounds,
                state_dir=Path(state),
                quorum=n,
                round_timeout=600.0,
                updates_queue=queue_type,
            ),
            participant=ParticipantConfig(federation=federation, participant_id="p"),
            broker_url=url,
        )
        try:
            result = await simulate(plan, SyntheticApp(params=params), [clock])
        finally:
            async with AmqpTransport(url) as transport:
                participants = [c.participant_id for c in participant_configs(plan)]
                await Topology(federation).delete(transport, participants)
    history = {int(row["version"]): float(row["seconds"]) for row in result.history}
    return FedqResult(
        seconds_per_round=clock.between(clock.committed, clock.committed, lag=1),
        commit_to_open=clock.between(clock.committed, clock.opened, lag=1),
        open_to_first_fold=clock.between(clock.opened, clock.first_update),
        first_to_last_fold=clock.between(clock.first_update, clock.last_update),
        last_fold_to_commit=clock.between(clock.last_update, clock.committed),
        history_seconds=median_from_round_2(history),
        cpu=CpuUse.per_round(clock.cpu),
        rejected=clock.rejected + result.updates_rejected,
    )


# ------------------------------------------------------------------------------- raw floor
@dataclass
class Countdown:
    """Set ``done`` (and stamp ``at``) once ``count`` messages were acked."""

    count: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    at: float = float("nan")

    async def acked(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        self.count -= 1
        if self.count == 0:
            self.at = time.perf_counter()
            self.done.set()


@dataclass(frozen=True)
class RawRound:
    """Seconds from the round's start (first update publish) to the end of each step."""

    updates_consumed: float  # all N updates delivered to and acked by the coordinator
    updates_confirmed: float  # all N update publishes confirmed to their publisher
    model_confirmed: float  # the model publish (started once all updates were consumed)
    models_consumed: float  # all N model copies delivered and acked

    @property
    def total(self) -> float:
        """The round is over when every copy was consumed and every publish confirmed."""
        return max(
            self.updates_consumed,
            self.updates_confirmed,
            self.model_confirmed,
            self.models_consumed,
        )


@dataclass(frozen=True)
class RawResult:
    seconds_per_round: float
    steps: RawRound  # each step's median from round 2
    cpu: CpuUse


async def run_raw(
    url: str, n: int, update_body: bytes, model_body: bytes, rounds: int, queue_type: str
) -> RawResult:
    with as_aio_pika_ships():
        return await _run_raw(url, n, update_body, model_body, rounds, queue_type)


async def _run_raw(
    url: str, n: int, update_body: bytes, model_body: bytes, rounds: int, queue_type: str
) -> RawResult:
    prefix = f"fedq-bench-raw-{uuid.uuid4().hex[:12]}"
    updates, models = f"{prefix}.updates", f"{prefix}.models"
    model_queues = [f"{prefix}.model.p{i}" for i in range(n)]
    # One connection per side, as fedq.simulation does.
    coordinator = await aio_pika.connect_robust(url)
    participants = await aio_pika.connect_robust(url)
    try:
        await declare_raw_topology(coordinator, updates, models, model_queues, queue_type)
        measured, cpu = await _raw_rounds(
            coordinator,
            participants,
            updates,
            models,
            model_queues,
            update_body,
            model_body,
            rounds,
        )
    finally:
        await _delete_raw(coordinator, [updates, *model_queues], [updates, models])
        await participants.close()
        await coordinator.close()

    def median(step: Callable[[RawRound], float]) -> float:
        return median_from_round_2({r: step(row) for r, row in measured.items()})

    return RawResult(
        seconds_per_round=median(lambda row: row.total),
        steps=RawRound(
            updates_consumed=median(lambda row: row.updates_consumed),
            updates_confirmed=median(lambda row: row.updates_confirmed),
            model_confirmed=median(lambda row: row.model_confirmed),
            models_consumed=median(lambda row: row.models_consumed),
        ),
        cpu=CpuUse.per_round(cpu),
    )


def _message(body: bytes) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        message_id=str(uuid.uuid4()),
        content_type="application/x-msgpack",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


async def _publish(exchange: AbstractExchange, key: str, body: bytes, *, copies: int) -> None:
    """``copies`` concurrent persistent publishes of ``body``, each awaiting its confirm."""
    await asyncio.gather(*(exchange.publish(_message(body), key) for _ in range(copies)))


async def _stamp(awaitable: Awaitable[object]) -> float:
    await awaitable
    return time.perf_counter()


async def _raw_rounds(
    coordinator: AbstractRobustConnection,
    participants: AbstractRobustConnection,
    updates: str,
    models: str,
    model_queues: list[str],
    update_body: bytes,
    model_body: bytes,
    rounds: int,
) -> tuple[dict[int, RawRound], dict[int, CpuUse]]:
    n = len(model_queues)
    # Channels as fedq's AmqpTransport opens them: one confirm channel per connection for
    # publishing (the N virtual participants share theirs), one channel per consumer
    # (coordinator prefetch max(2N, 16), each participant prefetch 1).
    coordinator_publish = await coordinator.channel(publisher_confirms=True)
    participant_publish = await participants.channel(publisher_confirms=True)
    update_exchange = await participant_publish.get_exchange(updates, ensure=False)
    model_exchange = await coordinator_publish.get_exchange(models, ensure=False)
    update_done = Countdown(0)
    model_done = Countdown(0)

    async def on_update(message: AbstractIncomingMessage) -> None:
        await update_done.acked(message)

    async def on_model(message: AbstractIncomingMessage) -> None:
        await model_done.acked(message)

    channels = [coordinator_publish, participant_publish]
    consume = await coordinator.channel()
    channels.append(consume)
    await consume.set_qos(prefetch_count=max(2 * n, 16))
    await (await consume.get_queue(updates)).consume(on_update)
    for name in model_queues:
        channel = await participants.channel()
        channels.append(channel)
        await channel.set_qos(prefetch_count=1)
        await (await channel.get_queue(name)).consume(on_model)

    measured: dict[int, RawRound] = {}
    cpu = {0: CpuUse.now()}
    try:
        for round_ in range(1, rounds + 1):
            update_done = Countdown(n)
            model_done = Countdown(n)
            start = time.perf_counter()
            # Confirms are not on the critical path (fedq's coordinator sees an update
            # before its publisher has the confirm), but the round ends only when they came.
            updates_confirmed = asyncio.create_task(
                _stamp(_publish(update_exchange, "update", update_body, copies=n))
            )
            await update_done.done.wait()
            model_confirmed = asyncio.create_task(
                _stamp(_publish(model_exchange, "", model_body, copies=1))
            )
            await model_done.done.wait()
            confirmed = await asyncio.gather(updates_confirmed, model_confirmed)
            measured[round_] = RawRound(
                updates_consumed=update_done.at - start,
                updates_confirmed=confirmed[0] - start,
                model_confirmed=confirmed[1] - start,
                models_consumed=model_done.at - start,
            )
            cpu[round_] = CpuUse.now()
    finally:
        for channel in reversed(channels):
            await channel.close()
    return measured, cpu


async def _delete_raw(
    connection: AbstractRobustConnection, queues: Sequence[str], exchanges: Sequence[str]
) -> None:
    channel = await connection.channel()
    for queue in queues:
        await channel.queue_delete(queue)
    for exchange in exchanges:
        await channel.exchange_delete(exchange)
    await channel.close()


# ------------------------------------------------------------------------------- CPU parts
@dataclass
class CpuParts:
    """Seconds, single-threaded, median of ``repeat`` runs."""

    encode_one: float  # encode_message of one update
    decode_validate_one: float  # decode_message + UpdateMeta + check_tensors
    fold_n: float  # N x WeightedMeanAccumulator.add
    mean_apply: float  # accumulator mean + apply_mean_delta
    checkpoint: float  # save_checkpoint (npz + fsync)
    model_encode: float  # encode_message of the model (once per round)
    participant_one: float  # model decode + float copy + train + delta + encode, one participant
    #: The coordinator's path for an update sent as chunks (bench/chunked_path.py), None
    #: when the update fits one message: every chunk's intake and spool, then the fold.
    chunked: ChunkedPath | None = None

    def serial_round(self, n: int) -> float:
        """All of a round's CPU work done one after the other (no overlap, no broker)."""
        return (
            n * (self.encode_one + self.decode_validate_one + self.participant_one)
            + self.fold_n
            + self.mean_apply
            + self.checkpoint
            + self.model_encode
        )


def update_meta(participant: str = "p0", num_examples: int = 100) -> UpdateMeta:
    return UpdateMeta(
        federation="bench",
        participant=participant,
        round=1,
        base_version=0,
        num_examples=num_examples,
        metrics={"loss": 0.0},
    )


def model_meta() -> ModelMeta:
    return ModelMeta(federation="bench", version=1, round=1, rounds_total=1)


def as_sent(meta: UpdateMeta | ModelMeta, weights: Weights) -> list[bytes]:
    """The bodies fedq sends for ``meta`` and ``weights`` with its default chunk size: one
    message, or its chunks."""
    return list(encode_chunks(meta, weights, "raw", DEFAULT_CHUNK_BYTES))


def measure_cpu(app: SyntheticApp, n: int, repeat: int) -> CpuParts:
    weights = app.initial_weights()
    spec = spec_of(weights)
    partition = Partition(0, n)
    train = TrainConfig()
    local = app.train(weights, partition, train).weights
    delta: Weights = {name: np.subtract(local[name], w) for name, w in weights.items()}
    meta = update_meta()
    body = encode_message(meta, delta)
    model_body = encode_message(model_meta(), weights)

    def decode_validate() -> None:
        decoded = decode_message(body, spec)
        decoded.meta(UpdateMeta)
        check_tensors(decoded.tensors, spec)

    deltas, _ = check_tensors(decode_message(body, spec).tensors, spec)

    def fold() -> Aggregation:
        aggregation = WeightedMean().start(
            AggregationContext(weights, n, 0, Path(tempfile.gettempdir()), version=1)
        )
        for i in range(n):
            aggregation.add(deltas, 100.0 * (i + 1))
        return aggregation

    aggregation = fold()

    def participant() -> None:  # what fedq.participant.worker does with one model
        decoded = decode_message(model_body)
        decoded.meta(ModelMeta)
        global_ = {t.name: np.array(t.array, dtype=t.dtype) for t in decoded.tensors}
        result = app.train(global_, partition, train)
        out = {k: np.subtract(result.weights[k], w, dtype=w.dtype) for k, w in global_.items()}
        encode_message(meta, out)

    with tempfile.TemporaryDirectory(prefix="fedq-bench-ckpt-") as folder:
        versions = iter(range(1, repeat + 2))
        checkpoint = median_seconds(
            lambda: save_checkpoint(Path(folder), next(versions), weights), repeat
        )
    return CpuParts(
        encode_one=median_seconds(lambda: encode_message(meta, delta), repeat),
        decode_validate_one=median_seconds(decode_validate, repeat),
        fold_n=median_seconds(fold, repeat),
        mean_apply=median_seconds(lambda: FedAvg().step(weights, aggregation.result()), repeat),
        checkpoint=checkpoint,
        model_encode=median_seconds(lambda: encode_message(model_meta(), weights), repeat),
        participant_one=median_seconds(participant, repeat),
        chunked=chunked_path_seconds(weights, delta, meta, repeat),
    )


# ------------------------------------------------------------------------------------ main
@dataclass
class ProcessRow:
    """The deployment shape: fedq and its floor as separate processes (deployment_shape.py)."""

    fedq: FedqProcessResult
    raw: RawProcessResult


@dataclass
class AgainstCommit:
    """Seconds per round, deployment shape, of this checkout and of another commit, in
    alternating pairs (this first in even pairs, the other first in odd ones)."""

    sha: str
    this: list[float]
    other: list[float]
    #: CPU seconds per round of every process (coordinator, participants, broker), per run.
    this_cpu: list[ShapeCpu] = field(default_factory=list)
    other_cpu: list[ShapeCpu] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        """This checkout's round time over the other's, per pair: above 1 is slower."""
        return [this / other for this, other in zip(self.this, self.other, strict=True)]


async def measure_against(
    url: str, n: int, params: int, rounds: int, queue_type: UpdatesQueueType,
    commit: InstalledCommit, pairs: int, profile: Path | None = None,
) -> AgainstCommit:  # fmt: skip
    """Alternating pairs of this checkout and ``commit``. With ``profile``, the first pair's
    two runs are sampled too, into ``profile/P<params>-this`` and ``-<commit>``: the same
    profile of both, in one run (sampling slows both sides alike; the other pairs are
    not sampled)."""
    result = AgainstCommit(commit.sha, [], [])
    for pair in range(pairs):
        sides: list[InstalledCommit | None] = [None, commit] if pair % 2 == 0 else [commit, None]
        for side in sides:
            name = "this checkout" if side is None else commit.sha[:8]
            print(f"  P={params:,}: pair {pair + 1}/{pairs}, {name} ...", flush=True)
            sampled = None
            if profile is not None and pair == 0:
                sampled = profile / f"P{params}-{'this' if side is None else commit.sha[:8]}"
            run = await run_fedq_processes(url, n, params, rounds, queue_type, side, sampled)
            (result.this if side is None else result.other).append(run.seconds_per_round)
            (result.this_cpu if side is None else result.other_cpu).append(run.cpu)
    return result


@dataclass
class Row:
    params: int
    update_bytes: int
    model_bytes: int
    fedq: FedqResult
    raw: RawResult
    cpu: CpuParts
    #: With ``--processes``: each pair of the deployment shape and its floor (one, or
    #: ``--floor-pairs K``), the floor first in the first pair, fedq in the second, ...
    floor_pairs: list[ProcessRow] = field(default_factory=list)
    #: 1-minute load average when this row's measurements started and ended.
    loadavg: tuple[float, float] = (float("nan"), float("nan"))
    against: AgainstCommit | None = None

    @property
    def processes(self) -> ProcessRow | None:
        """The first pair: the one reported in full."""
        return self.floor_pairs[0] if self.floor_pairs else None

    def floor_ratios(self) -> list[float]:
        """fedq's round over its floor's, per pair."""
        return [p.fedq.seconds_per_round / p.raw.seconds_per_round for p in self.floor_pairs]


async def measure(
    url: str,
    n: int,
    params: int,
    rounds: int,
    repeat: int,
    queue_type: UpdatesQueueType,
    processes: bool,
    against: InstalledCommit | None = None,
    pairs: int = 3,
    profile: Path | None = None,
    floor_pairs: int = 1,
) -> Row:
    load_at_start = os.getloadavg()[0]
    app = SyntheticApp(params=params)
    weights = app.initial_weights()
    update_body = encode_message(update_meta(), weights)
    model_body = encode_message(model_meta(), weights)
    cpu = measure_cpu(app, n, repeat)
    process_pairs: list[ProcessRow] = []
    if processes:
        print(f"  P={params:,}: CPU parts done", flush=True)
        for pair in range(floor_pairs):
            sampled = profile / f"P{params}" if profile is not None and pair == 0 else None
            process_pairs.append(
                await _deployment_pair(
                    url, n, weights, rounds, queue_type, (pair, floor_pairs), sampled
                )
            )
    compared = None
    if against is not None:
        compared = await measure_against(
            url, n, params, rounds, queue_type, against, pairs, profile
        )
    print(f"  P={params:,}: raw floor, one process ...", flush=True)
    raw = await run_raw(url, n, update_body, model_body, rounds, queue_type)
    print(f"  P={params:,}: raw floor done; fedq, one process ...", flush=True)
    fedq = await run_fedq(url, n, params, rounds, queue_type)
    return Row(
        params,
        len(update_body),
        len(model_body),
        fedq,
        raw,
        cpu,
        process_pairs,
        (load_at_start, os.getloadavg()[0]),
        compared,
    )


async def _deployment_pair(
    url: str, n: int, weights: Weights, rounds: int, queue_type: UpdatesQueueType,
    pair: tuple[int, int], profile: Path | None,
) -> ProcessRow:  # fmt: skip
    """The deployment shape and its floor, one after the other: the floor first in even
    pairs (``pair`` is its index and the count), fedq first in odd ones, so that a machine
    that slows down or speeds up during the run weighs on both alike."""
    params = sum(w.size for w in weights.values())

    def started(side: str) -> None:
        where = f"pair {pair[0] + 1}/{pair[1]}, {side}, {n + 1} processes"
        print(f"  P={params:,}: {where} ...", flush=True)

    async def floor() -> RawProcessResult:
        started("floor")
        # The floor moves what fedq moves: an update or a model above the chunk size as
        # its chunks (at 10M, ten of 4 MiB), not one whole message, which RabbitMQ moves
        # more slowly (before 2026-12-08 it did, and flattered fedq at 10M).
        update, model = as_sent(update_meta(), weights), as_sent(model_meta(), weights)
        return await run_raw_processes(url, n, update, model, rounds, queue_type)

    async def fedq() -> FedqProcessResult:
        started("fedq")
        return await run_fedq_processes(url, n, params, rounds, queue_type, profile=profile)

    if pair[0] % 2 == 0:
        raw = await floor()
        return ProcessRow(await fedq(), raw)
    fedq_run = await fedq()
    return ProcessRow(fedq_run, await floor())


def line(seconds: float, what: str, times: int = 1) -> str:
    """One breakdown line in milliseconds; ``times`` > 1 also shows the N-fold total."""
    total = f" (x{times} = {times * seconds * 1e3:.1f} ms)" if times > 1 else ""
    return f"    {seconds * 1e3:9.1f} ms  {what}{total}"


def shapes(row: Row) -> list[tuple[str, float, float]]:
    """(shape, fedq s/round, raw floor s/round) of a row, the deployment shape first."""
    found = []
    if row.processes is not None:
        found.append(
            (
                "processes",
                row.processes.fedq.seconds_per_round,
                row.processes.raw.seconds_per_round,
            )
        )
    found.append(("simulation", row.fedq.seconds_per_round, row.raw.seconds_per_round))
    return found


def report_processes(row: ProcessRow, n: int, cores: int) -> None:
    f, r = row.fedq, row.raw
    print(f"  deployment shape: fedq, 1 + {n} processes, median from round 2 (ledger, logs):")
    print(line(f.commit_to_open, "commit -> next version opened"))
    print(line(f.open_to_first_sent, "opened -> 1st participant's update confirmed"))
    print(line(f.open_to_last_sent, f"opened -> {n}th participant's update confirmed"))
    print(line(f.last_sent_to_commit, f"{n}th update confirmed -> commit"))
    print(line(f.seconds_per_round, "round (commit to commit)"))
    print(f"    (round 1, with start-up: {f.startup_seconds:.1f} s from launch to commit)")
    if f.rejected:
        print(f"    !! {f.rejected} updates rejected")
    cpu_lines(f.cpu, f.seconds_per_round, n, cores, "coordinator process")
    print(f"  deployment shape: raw floor, 1 + {n} processes, median from round 2:")
    print(line(r.end_to_publish, "round end -> next model publish"))
    print(line(r.publish_to_first_model, "model publish -> 1st copy consumed"))
    print(line(r.publish_to_last_model, f"model publish -> {n}th copy consumed"))
    print(line(r.model_confirmed, "model publish -> confirmed"))
    print(line(r.publish_to_last_update, f"model publish -> {n}th update consumed (round end)"))
    print(line(r.publish_to_updates_confirmed, f"model publish -> {n} updates confirmed"))
    print(line(r.seconds_per_round, "round (end to end)"))
    cpu_lines(r.cpu, r.seconds_per_round, n, cores, "coordinator side (this process)")


def cpu_lines(cpu: ShapeCpu, seconds: float, n: int, cores: int, coordinator: str) -> None:
    print(line(cpu.coordinator, f"CPU per round: {coordinator}"))
    print(line(cpu.participants, f"CPU per round: {n} participant processes together"))
    print(line(cpu.broker, "CPU per round: broker (with Erlang busy-wait)"))
    busy = cpu.total / (cores * seconds) if seconds > 0 else float("nan")
    print(line(cpu.total, f"CPU per round, all: {busy:.0%} of {cores} cores over the round"))


def report_floor_pairs(row: Row) -> None:
    print("  deployment shape against its floor, alternating pairs (floor first in pair 1):")
    for pair, (run, ratio) in enumerate(zip(row.floor_pairs, row.floor_ratios(), strict=True), 1):
        print(
            f"    pair {pair}: fedq {run.fedq.seconds_per_round:.3f} s, floor "
            f"{run.raw.seconds_per_round:.3f} s per round: {ratio:.2f}x"
        )
    print(f"    median ratio {statistics.median(row.floor_ratios()):.2f}x")


def report_against(compared: AgainstCommit) -> None:
    name = compared.sha[:8]
    print(f"  deployment shape: this checkout against {name}, alternating pairs:")
    for pair, (this, other, ratio) in enumerate(
        zip(compared.this, compared.other, compared.ratios, strict=True), 1
    ):
        print(f"    pair {pair}: this {this:.3f} s, {name} {other:.3f} s per round: {ratio:.2f}x")
    print(f"    median ratio {statistics.median(compared.ratios):.2f}x (above 1: this is slower)")
    for side, runs in (("this checkout", compared.this_cpu), (name, compared.other_cpu)):
        parts = ", ".join(
            f"{1e3 * c.coordinator:.0f} + {1e3 * c.participants:.0f} + {1e3 * c.broker:.0f}"
            f" = {1e3 * c.total:.0f}"
            for c in runs
        )
        print(f"    CPU ms per round, {side} (coordinator + participants + broker): {parts}")


def report(rows: list[Row], n: int) -> None:
    cores = os.cpu_count() or 1
    print()
    print(
        f"{'shape':>10} {'P':>12} {'body MB':>8} {'fedq s/round':>13} {'raw s/round':>12} "
        f"{'fedq/raw':>9}"
    )
    for row in rows:
        for shape, fedq_seconds, raw_seconds in shapes(row):
            print(
                f"{shape:>10} {row.params:>12,} {row.update_bytes / 1e6:>8.1f} "
                f"{fedq_seconds:>13.3f} {raw_seconds:>12.3f} {fedq_seconds / raw_seconds:>9.2f}"
            )
    for row in rows:
        f, r, c = row.fedq, row.raw, row.cpu
        print()
        print(
            f"P = {row.params:,} ({row.update_bytes / 1e6:.1f} MB per update, N = {n}; "
            f"1-min load average {row.loadavg[0]:.1f} at start, {row.loadavg[1]:.1f} at end)"
        )
        if row.processes is not None:
            report_processes(row.processes, n, cores)
        if len(row.floor_pairs) > 1:
            report_floor_pairs(row)
        if row.against is not None:
            report_against(row.against)
        print("  simulation shape: fedq round, median from round 2 (commit to commit):")
        print(line(f.commit_to_open, "commit -> open: model encode + round.open + model publish"))
        print(line(f.open_to_first_fold, "open -> 1st update folded: model in, train, delta out"))
        print(line(f.first_to_last_fold, f"1st -> {n}th update folded"))
        print(line(f.last_fold_to_commit, "last fold -> commit: mean, apply, checkpoint, ledger"))
        print(
            line(f.seconds_per_round, f"round (ledger's open -> commit: {f.history_seconds:.3f} s)")
        )
        if f.rejected:
            print(f"    !! {f.rejected} updates rejected")
        print(line(f.cpu.python, "CPU of this Python process per round (all threads)"))
        print(line(f.cpu.broker, "CPU of the broker per round (with Erlang busy-wait)"))
        print("  simulation shape: raw floor round, median from round 2 (from the round's start):")
        print(line(r.steps.updates_consumed, f"{n} updates consumed + acked"))
        print(line(r.steps.updates_confirmed, f"{n} update publishes confirmed"))
        print(line(r.steps.model_confirmed, "model publish confirmed"))
        print(line(r.steps.models_consumed, f"{n} model copies consumed + acked"))
        print(line(r.seconds_per_round, "round (each round ends at its last step)"))
        print(line(r.cpu.python, "CPU of this Python process per round (all threads)"))
        print(line(r.cpu.broker, "CPU of the broker per round (with Erlang busy-wait)"))
        print("  CPU parts of one round, single thread, warm buffers, no broker (median):")
        print(line(c.encode_one, "encode 1 update", n))
        print(line(c.decode_validate_one, "decode + validate 1 update", n))
        print(line(c.fold_n, f"accumulator fold x{n}"))
        print(line(c.mean_apply, "mean + apply"))
        print(line(c.checkpoint, "checkpoint save (npz + fsync)"))
        print(line(c.model_encode, "model encode"))
        print(line(c.participant_one, "participant: model decode + copy, train, delta, encode", n))
        if c.chunked is not None:
            print(line(c.chunked.intake, "as chunks: intake + spool of every chunk of 1 update", n))
            print(line(c.chunked.fold, "as chunks: whole checked, read back + folded, 1 update", n))
        print(line(c.serial_round(n), "sum: all of a round's CPU work in series"))


def figures(args: argparse.Namespace, tuned: bool, rows: list[Row], wall: float) -> dict[str, Any]:
    """Every figure of the run, for the last line."""

    def ratios(row: Row) -> dict[str, Any]:
        return {
            shape: {
                "fedq_s_per_round": fedq_seconds,
                "raw_s_per_round": raw_seconds,
                "ratio": fedq_seconds / raw_seconds,
            }
            for shape, fedq_seconds, raw_seconds in shapes(row)
        }

    return {
        "bench": "round_overhead",
        "participants": args.participants,
        "rounds": args.rounds,
        "updates_queue": args.updates_queue,
        "processes": args.processes,
        "malloc_tuning": tuned,
        "cores": os.cpu_count(),
        "wall_seconds": wall,
        "rows": [
            {
                "params": row.params,
                "update_bytes": row.update_bytes,
                "model_bytes": row.model_bytes,
                "loadavg_1min": list(row.loadavg),
                "shapes": ratios(row),
                "fedq": dataclasses.asdict(row.fedq),
                "raw": dataclasses.asdict(row.raw) | {"steps_total": row.raw.steps.total},
                "cpu_parts": dataclasses.asdict(row.cpu)
                | {"serial_round": row.cpu.serial_round(args.participants)},
                "against": None
                if row.against is None
                else {
                    "commit": row.against.sha,
                    "this_s_per_round": row.against.this,
                    "other_s_per_round": row.against.other,
                    "ratios": row.against.ratios,
                    "this_cpu_s_per_round": [c.total for c in row.against.this_cpu],
                    "other_cpu_s_per_round": [c.total for c in row.against.other_cpu],
                    "median_ratio": statistics.median(row.against.ratios),
                },
                "processes": None
                if row.processes is None
                else {
                    "fedq": dataclasses.asdict(row.processes.fedq),
                    "raw": dataclasses.asdict(row.processes.raw),
                },
                "floor_pairs": None
                if len(row.floor_pairs) < 2
                else {
                    "fedq_s_per_round": [p.fedq.seconds_per_round for p in row.floor_pairs],
                    "raw_s_per_round": [p.raw.seconds_per_round for p in row.floor_pairs],
                    "ratios": row.floor_ratios(),
                    "median_ratio": statistics.median(row.floor_ratios()),
                },
            }
            for row in rows
        ],
    }


async def amain(args: argparse.Namespace, against: InstalledCommit | None) -> list[Row]:
    rows = []
    for params in args.params:
        row = await measure(
            args.broker,
            args.participants,
            params,
            args.rounds,
            args.repeat,
            args.updates_queue,
            args.processes,
            against,
            args.pairs,
            args.profile,
            args.floor_pairs,
        )
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per run (>= 2)")
    parser.add_argument("--broker", default=DEFAULT_BROKER_URL)
    parser.add_argument("--repeat", type=int, default=3, help="runs per CPU part")
    parser.add_argument(
        "--updates-queue",
        choices=["classic", "quorum"],
        default="quorum",
        help="type of the updates queue, for fedq and the raw floor alike",
    )
    parser.add_argument(
        "--processes",
        action="store_true",
        help="also measure the deployment shape: a fedq coordinator and N fedq participant "
        "processes, one connection each, against a floor of N participant processes",
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="with --processes: also run the deployment shape of commit REV, in alternating "
        "pairs with this checkout, and report this checkout's round time over REV's",
    )
    parser.add_argument("--pairs", type=int, default=3, help="pairs with --against")
    parser.add_argument(
        "--floor-pairs",
        type=int,
        default=1,
        metavar="K",
        help="with --processes: run the deployment shape and its floor K times each, in "
        "alternating pairs (the floor first in the first pair), and report the median of "
        "the K ratios",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="with --processes: sample each fedq process with py-spy into DIR/P<params>/"
        "<process>.txt (collapsed stacks; python bench/profile_summary.py DIR/P<params> "
        "sums them up); with --against, also the first pair into DIR/P<params>-this and "
        "DIR/P<params>-<commit>",
    )
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: round 1 is warm-up")
    if (args.against or args.profile or args.floor_pairs > 1) and not args.processes:
        parser.error(
            "--against, --profile and --floor-pairs are of the deployment shape: add --processes"
        )
    if args.floor_pairs < 1:
        parser.error("--floor-pairs must be at least 1")
    tuned = tune_process()  # as the fedq CLI does at start
    print(f"glibc malloc tuning: {'on' if tuned else 'off'} (FEDQ_MALLOC_TUNING=0 turns it off)")
    print(
        f"N = {args.participants} participants, quorum = N, {args.rounds} rounds, "
        f"P = {', '.join(f'{p:,}' for p in args.params)} float32, "
        f"RabbitMQ at {redact(args.broker)}, {args.updates_queue} updates queue"
    )
    print(f"{os.cpu_count()} CPU cores shared by these processes and a local broker, if any")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        against = stack.enter_context(installed_commit(args.against)) if args.against else None
        rows = asyncio.run(amain(args, against))
    report(rows, args.participants)
    wall = time.perf_counter() - started
    print(f"\nwall time {wall:.0f} s")
    print(strict_json.dumps(figures(args, tuned, rows, wall)))


if __name__ == "__main__":
    main()
