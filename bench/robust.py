"""Robust aggregators against poisoned updates: Fashion-MNIST, 2 of 10 participants malicious.

    python bench/robust.py [--rounds 5] [--participants 10] [--only AGGREGATOR]

Each run is ``fedq.simulation.simulate`` in this process on the embedded broker (no
RabbitMQ): the CNN of ``fedq.apps.fmnist`` on an IID split, quorum = N (every update in
every round), R rounds, its own temporary state dir. Runs:

1. clean: nobody attacks, aggregator ``mean`` (FedAvg): the reference accuracy.
2. for each attack, ``scale:-10`` (send -10 x the trained delta) and ``sign_flip``
   (send -delta), participants 0 and 1 malicious, under ``mean``, ``median``,
   ``trimmed_mean`` (trim_fraction 0.2: 2 of 10 values cut at each end), ``krum``
   (byzantine 2) and ``multi_krum`` (krum, byzantine 2, select 5).

Reported is the test accuracy (10,000 images) of the last model, its difference to the
clean run in points, whether that is within 3 points, and the accuracy after each round.
Reading it: ``scale:-10`` drags FedAvg's mean to about -1.2 x the honest one (8 - 2 x 10
over 10), so the model collapses; ``sign_flip`` only shrinks it to 0.6 x (8 - 2 over 10),
so FedAvg learns more slowly, clearly behind in the first rounds, and catches up as
training converges.

Every run gets a fresh instance of the fmnist app (same model builder, data and seed as
``fedq.apps.fmnist:app``): the module's ``app`` keeps each partition's Keras model and
Adam state between federations of one process, which would carry one run's training into
the next. Initial weights and the data split are seeded. Median, trimmed mean and Krum sort or
select, so their runs repeated exactly; the mean folds updates in float32 in the order
they arrive, which varies, so its runs differ a little: the clean run ended at 84.95 %,
84.83 % and 84.84 % in three runs.

The last line is one JSON object with every figure, for scripts. On 2 CPU cores a run of
5 rounds takes 40 to 65 s and the whole bench (11 runs) 8 to 10 minutes (492 s and 595 s
in two full runs on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fmnist_runs import fresh_app, run_isolated

from fedq import strict_json
from fedq.apps import fmnist
from fedq.coordinator.config import CoordinatorConfig, StrategyOptions
from fedq.participant.config import ParticipantConfig
from fedq.simulation import SimulationPlan, simulate

APP = "fedq.apps.fmnist:app"
MALICIOUS = (0, 1)
ATTACKS = ("scale:-10", "sign_flip")
TOLERANCE_POINTS = 3.0
#: label -> (aggregator, its options)
AGGREGATORS: dict[str, tuple[str, StrategyOptions]] = {
    "mean": ("mean", {}),
    "median": ("median", {}),
    "trimmed_mean": ("trimmed_mean", {"trim_fraction": 0.2}),
    "krum": ("krum", {"byzantine": 2}),
    "multi_krum": ("krum", {"byzantine": 2, "select": 5}),
}


@dataclass
class Run:
    attack: str | None
    aggregator: str
    accuracy: float
    loss: float
    accuracy_per_round: list[float]
    seconds: float
    updates_rejected: int


async def federate(
    attack: str | None, label: str, participants: int, rounds: int, state: Path
) -> Run:
    aggregator, options = AGGREGATORS[label]
    name = f"robust-{label}-{attack or 'clean'}".replace(":", "").replace("_", "-")
    plan = SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=name,
            participants=participants,
            rounds=rounds,
            state_dir=state,
            aggregator=aggregator,
            aggregator_options=options,
            round_timeout=900.0,
        ),
        participant=ParticipantConfig(federation=name, participant_id="p"),
        broker_url=None,
        malicious=() if attack is None else tuple((i, attack) for i in MALICIOUS),
    )
    started = time.perf_counter()
    result = await simulate(plan, fresh_app())
    seconds = time.perf_counter() - started
    return Run(
        attack=attack,
        aggregator=label,
        accuracy=result.final_metrics["accuracy"],
        loss=result.final_metrics["loss"],
        accuracy_per_round=[row["metrics"]["accuracy"] for row in result.history],
        seconds=seconds,
        updates_rejected=result.updates_rejected,
    )


def run_one(attack: str | None, label: str, participants: int, rounds: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="fedq-robust-") as state:
        return run_isolated(lambda: federate(attack, label, participants, rounds, Path(state)))


def points(run: Run, clean: Run) -> float:
    return 100 * (run.accuracy - clean.accuracy)


def within(run: Run, clean: Run) -> bool:
    return points(run, clean) >= -TOLERANCE_POINTS


def print_table(clean: Run, runs: list[Run]) -> None:
    print()
    print(
        f"{'attack':<10} {'aggregator':<13} {'accuracy':>8} {'vs clean':>9} "
        f"{'within 3':>8} {'seconds':>8}  accuracy % after each round"
    )
    for run in [clean, *runs]:
        trajectory = " ".join(f"{100 * a:4.1f}" for a in run.accuracy_per_round)
        print(
            f"{run.attack or 'none':<10} {run.aggregator:<13} {100 * run.accuracy:>7.2f}% "
            f"{points(run, clean):>+9.2f} {'yes' if within(run, clean) else 'NO':>8} "
            f"{run.seconds:>8.0f}  {trajectory}"
        )


def figures(args: argparse.Namespace, clean: Run, runs: list[Run], wall: float) -> dict[str, Any]:
    def row(run: Run) -> dict[str, Any]:
        return {
            **asdict(run),
            "aggregator_options": AGGREGATORS[run.aggregator][1],
            "points_vs_clean": points(run, clean),
            "within_tolerance": within(run, clean),
        }

    return {
        "bench": "robust",
        "app": APP,
        "participants": args.participants,
        "rounds": args.rounds,
        "malicious": list(MALICIOUS),
        "tolerance_points": TOLERANCE_POINTS,
        "cpu_count": os.cpu_count(),
        "clean": row(clean),
        "runs": [row(run) for run in runs],
        "wall_seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument(
        "--only",
        choices=list(AGGREGATORS),
        help="under attack, run only this aggregator (the clean run always runs)",
    )
    args = parser.parse_args()
    if args.participants < 2 * len(MALICIOUS) + 3:
        parser.error(f"krum with byzantine={len(MALICIOUS)} needs at least 7 participants")
    fmnist.check_files()
    labels = [args.only] if args.only else list(AGGREGATORS)
    print(
        f"{APP}: {args.participants} participants, {args.rounds} rounds, quorum = N, "
        f"embedded broker; malicious under attack: "
        f"{', '.join(f'p{i}' for i in MALICIOUS)}; {os.cpu_count()} CPU cores"
    )
    started = time.perf_counter()
    clean = run_one(None, "mean", args.participants, args.rounds)
    print(f"  clean mean: {100 * clean.accuracy:.2f}% in {clean.seconds:.0f} s", flush=True)
    runs = []
    for attack in ATTACKS:
        for label in labels:
            run = run_one(attack, label, args.participants, args.rounds)
            print(
                f"  {attack} {label}: {100 * run.accuracy:.2f}% in {run.seconds:.0f} s",
                flush=True,
            )
            runs.append(run)
    wall = time.perf_counter() - started
    print_table(clean, runs)
    print(f"\nwall time {wall:.0f} s")
    print(strict_json.dumps(figures(args, clean, runs, wall)))


if __name__ == "__main__":
    main()
