"""Update codecs on Fashion-MNIST: bytes on the wire against final accuracy.

    python bench/compression.py [--participants 10] [--rounds 10] [--scheme dirichlet:0.5]
        [--codecs raw fp16 int8 topk:0.01] [--app app] [--epochs 1] [--seed 42]
        [--broker URL]

For each codec the same federation runs through ``fedq.simulation.simulate`` in this
process: the CNN of ``fedq.apps.fmnist:app`` (56,714 float32 parameters, Adam; or with
``--app niid_cnn`` NIID-Bench's CNN, 44,426 parameters, SGD with momentum) with fedq's
default local training (a fresh optimizer each round), N participants on the same seeded
split (``--scheme``, default label skew Dirichlet(0.5)), sync mode (every
participant in every round, so rounds are comparable), the same seeded initial weights,
R rounds, ``--epochs`` local epochs per round, its own temporary state dir. Participants
send their deltas with the codec; a lossy one (fp16, int8, topk) is paired with the
participant's error feedback (:mod:`fedq.participant.compression`); topk picks its
entries across the whole update, and the coordinator aggregates topk updates with
``--sparse-aggregator`` (default ``sparse_mean``: an entry a participant did not send is not
a vote for zero; ``mean`` is FedAvg's), every other codec with FedAvg's mean. ``raw`` is
the reference and must be among ``--codecs``.

Reported per codec: bytes per update (the mean size of the update message bodies the
ledger recorded: what crossed the wire, metadata included), its ratio to raw, the test
accuracy (10,000 images) of the last model and the best one after any round, the
difference of the last to raw's in points, seconds per round (mean of the ledger's
opened-to-committed time per version; the first round includes loading the data and
building each participant's model) and the accuracy after each round.

Embedded broker by default (no RabbitMQ); ``--broker amqp://...`` runs the same code on
RabbitMQ. The body sizes, so the ratios, are the same either way. Local training shuffles
with TensorFlow's shared random state while 10 participants train in threads at once, so
two runs of one codec differ a little even with one seed: raw ended at 74.56 % and
74.62 % in two runs of the default setting.

The last line is one JSON object with every figure, for scripts. On 2 CPU cores shared
with other work, one federation of 10 rounds took 2 to 3 minutes and the default bench
(4 codecs) 572 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmnist_runs import provenance, run_isolated

from fedq.apps import fmnist
from fedq.apps.keras_app import KerasApp, shard
from fedq.coordinator.config import CoordinatorConfig
from fedq.messages.amqp import redact
from fedq.messages.codecs import CodecError, get_codec
from fedq.participant.app import AppError, Partition, TrainConfig
from fedq.participant.partitions import ENV_VAR, Scheme, scheme_from_env
from fedq.participant.worker import ParticipantConfig
from fedq.simulation import SimulationPlan, simulate

#: --app -> the fedq.apps.fmnist app whose model and local training a run uses. ``app``:
#: 56,714 parameters, Adam 1e-3, batches of 32; ``niid_cnn``: NIID-Bench's CNN, 44,426
#: parameters, SGD 0.01 momentum 0.9, batches of 64. --epochs replaces their epochs.
APPS: dict[str, tuple[Callable[[], Any], TrainConfig]] = {
    "app": (fmnist.build_model, fmnist.app.train_config),
    "niid_cnn": (fmnist.build_niid_cnn, fmnist.niid_cnn.train_config),
}
REFERENCE = "raw"
#: The issue's targets: (codec, fewest times fewer bytes than raw); accuracy within 2 points.
TARGET_RATIOS = {"int8": 3.5, "topk:0.01": 30.0}
TOLERANCE_POINTS = 2.0


@dataclasses.dataclass
class Run:
    codec: str
    aggregator: str
    bytes_per_update: float
    updates: int
    accuracy: float
    best_accuracy: float
    accuracy_per_round: list[float]
    seconds_per_round: float
    wall_seconds: float
    updates_rejected: int


def seeded_app(name: str, seed: int) -> KerasApp:
    """Like ``fmnist_runs.fresh_app`` (fmnist's data, no Keras model built yet, so no run
    inherits another's training) for app ``name``, with ``seed`` for the initial weights
    and the split instead of ``fmnist.SEED``."""

    def load_partition(partition: Partition) -> tuple[Any, Any]:
        return shard(fmnist.load_train(), partition, seed, scheme_from_env())

    return KerasApp(
        APPS[name][0],
        load_partition,
        fmnist.load_test,
        seed=seed,
        check=fmnist.check_files,
    )


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The app's local training (batch size, optimizer settings) with ``--epochs``."""
    return dataclasses.replace(APPS[args.app][1], epochs=args.epochs)


def federation_name(codec: str) -> str:
    """Unique on a shared RabbitMQ: codec, process id and time; only [A-Za-z0-9_-]."""
    label = re.sub(r"[^A-Za-z0-9]", "-", codec)
    return f"compression-{label}-{os.getpid()}-{int(time.time())}"[:64]


def aggregator_for(codec: str, args: argparse.Namespace) -> str:
    """``--sparse-aggregator`` for topk updates (an entry a participant did not send is not
    a vote for zero, see fedq.coordinator.strategies.sparse_mean), FedAvg's mean else."""
    return args.sparse_aggregator if get_codec(codec).name == "topk" else "mean"


async def federate(args: argparse.Namespace, codec: str, state: Path) -> Run:
    name = federation_name(codec)
    aggregator = aggregator_for(codec, args)
    plan = SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=name,
            participants=args.participants,
            rounds=args.rounds,
            state_dir=state,
            mode="sync",
            aggregator=aggregator,
            round_timeout=1800.0,
        ),
        participant=ParticipantConfig(
            federation=name,
            participant_id="p",
            codec=codec,
            train=train_config(args),
        ),
        broker_url=args.broker,
    )
    started = time.perf_counter()
    result = await simulate(plan, seeded_app(args.app, args.seed))
    wall = time.perf_counter() - started
    history = result.history
    updates = sum(row["n_updates"] for row in history)
    accuracies = [row["metrics"]["accuracy"] for row in history]
    return Run(
        codec=codec,
        aggregator=aggregator,
        bytes_per_update=sum(row["update_bytes"] for row in history) / max(updates, 1),
        updates=updates,
        accuracy=result.final_metrics["accuracy"],
        best_accuracy=max(accuracies),
        accuracy_per_round=accuracies,
        seconds_per_round=statistics.fmean(row["seconds"] for row in history),
        wall_seconds=wall,
        updates_rejected=result.updates_rejected,
    )


def run_one(args: argparse.Namespace, codec: str) -> Run:
    with tempfile.TemporaryDirectory(prefix="fedq-compression-") as state:
        return run_isolated(lambda: federate(args, codec, Path(state)))


def ratio(run: Run, reference: Run) -> float:
    return reference.bytes_per_update / run.bytes_per_update


def points(run: Run, reference: Run) -> float:
    return 100 * (run.accuracy - reference.accuracy)


def verdict(run: Run, reference: Run) -> dict[str, Any] | None:
    """Whether ``run`` meets the issue's target, for the codecs that have one."""
    if run.codec not in TARGET_RATIOS:
        return None
    wanted = TARGET_RATIOS[run.codec]
    ratio_ok = ratio(run, reference) >= wanted
    # Keras reports accuracy as float32: 7,750 of 10,000 against 7,950 is -2.000004 points.
    # The test set's resolution is 0.01 points; compare at it.
    accuracy_ok = abs(round(points(run, reference), 2)) <= TOLERANCE_POINTS
    return {
        "ratio_at_least": wanted,
        "ratio_ok": ratio_ok,
        "accuracy_within_points": TOLERANCE_POINTS,
        "accuracy_ok": accuracy_ok,
        "met": ratio_ok and accuracy_ok,
    }


def print_table(runs: list[Run], reference: Run) -> None:
    print()
    print(
        f"{'codec':<10} {'aggregator':<11} {'bytes/update':>12} {'vs raw':>7} "
        f"{'final acc':>9} {'best acc':>8} {'vs raw':>7} {'s/round':>7}  "
        "target  accuracy % after each round"
    )
    for run in runs:
        check = verdict(run, reference)
        target = "-" if check is None else ("met" if check["met"] else "MISSED")
        trajectory = " ".join(f"{100 * a:4.1f}" for a in run.accuracy_per_round)
        print(
            f"{run.codec:<10} {run.aggregator:<11} {run.bytes_per_update:>12,.0f} "
            f"{ratio(run, reference):>6.1f}x "
            f"{100 * run.accuracy:>8.2f}% {100 * run.best_accuracy:>7.2f}% "
            f"{points(run, reference):>+7.2f} {run.seconds_per_round:>7.1f}  {target:<6}  "
            f"{trajectory}"
        )


def figures(
    args: argparse.Namespace, runs: list[Run], reference: Run, wall: float
) -> dict[str, Any]:
    return {
        "bench": "compression",
        "app": f"fedq.apps.fmnist:{args.app}",
        "train": dataclasses.asdict(train_config(args)),
        "participants": args.participants,
        "rounds": args.rounds,
        "scheme": args.scheme,
        "epochs": args.epochs,
        "seed": args.seed,
        "mode": "sync",
        "broker": "embedded" if args.broker is None else redact(args.broker),
        "provenance": {**provenance(), "data_seed": args.seed},
        "runs": [
            {
                **dataclasses.asdict(run),
                "ratio_vs_raw": ratio(run, reference),
                "points_vs_raw": points(run, reference),
                "target": verdict(run, reference),
            }
            for run in runs
        ],
        "wall_seconds": wall,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--scheme", default="dirichlet:0.5", help="how the data is split")
    parser.add_argument(
        "--codecs", nargs="+", default=["raw", "fp16", "int8", "topk:0.01"], metavar="CODEC"
    )
    parser.add_argument(
        "--sparse-aggregator",
        default="sparse_mean",
        help="the coordinator's aggregator for topk updates (mean: FedAvg's)",
    )
    parser.add_argument("--app", choices=list(APPS), default="app", help="see APPS")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--seed", type=int, default=fmnist.SEED, help="initial weights, split")
    parser.add_argument(
        "--broker", default=None, help="RabbitMQ URL (default: the embedded in-memory broker)"
    )
    args = parser.parse_args()
    if args.participants < 1 or args.rounds < 1 or args.epochs < 1:
        parser.error("--participants, --rounds and --epochs must be at least 1")
    if REFERENCE not in args.codecs:
        parser.error(f"--codecs must include {REFERENCE}: the reference of every ratio")
    for codec in args.codecs:
        try:
            get_codec(codec)
        except CodecError as exc:
            parser.error(f"--codecs: {exc}")
    try:
        Scheme.parse(args.scheme)
    except ValueError as exc:
        parser.error(f"--scheme: {exc}")
    # The reference first: every other row is compared to it as soon as it is printed.
    args.codecs = [REFERENCE, *dict.fromkeys(c for c in args.codecs if c != REFERENCE)]
    return args


def main() -> None:
    args = parse_args()
    try:
        fmnist.check_files()
    except AppError as exc:
        raise SystemExit(f"error: {exc}") from None
    os.environ[ENV_VAR] = args.scheme  # the apps read the split from it
    where = "embedded broker" if args.broker is None else f"RabbitMQ at {redact(args.broker)}"
    print(
        f"fedq.apps.fmnist:{args.app}: {args.participants} participants, "
        f"{args.rounds} rounds (sync), {args.scheme}, {args.epochs} epoch(s) per round, "
        f"seed {args.seed}, {where}; "
        f"{os.cpu_count()} CPU cores",
        flush=True,
    )
    started = time.perf_counter()
    runs: list[Run] = []
    for codec in args.codecs:
        run = run_one(args, codec)
        runs.append(run)
        print(
            f"  {codec}: {run.bytes_per_update:,.0f} bytes/update, "
            f"{100 * run.accuracy:.2f}% in {run.wall_seconds:.0f} s",
            flush=True,
        )
    wall = time.perf_counter() - started
    reference = runs[0]
    print_table(runs, reference)
    print(f"\nwall time {wall:.0f} s")
    print(json.dumps(figures(args, runs, reference, wall)))


if __name__ == "__main__":
    main()
