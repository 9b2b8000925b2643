"""Learning quality in NIID-Bench's Fashion-MNIST setting: does fedq learn as well as the
published baselines?

    python bench/accuracy.py           # quick profile: 2 local epochs, 10 rounds
    python bench/accuracy.py --full    # the paper's scale: 10 local epochs, 50 rounds
    python bench/accuracy.py --xla     # local training compiled by XLA (9% shorter here)
    python bench/accuracy.py --seeds 42 1 2   # each run on three draws of the split

The setting of NIID-Bench (Li, Diao, Chen, He: "Federated Learning on Non-IID Data Silos:
An Experimental Study", ICDE 2022): its simple CNN (``fedq.apps.fmnist:niid_cnn``), 10
participants, all of them in every round (sync mode), batches of 64, SGD with learning
rate 0.01 and momentum 0.9, a fresh local optimizer each round, a local weight decay of
1e-5 (NIID-Bench's ``--reg``; ``--weight-decay``). Partitions (fedq's
``--partition-scheme``): homogeneous (``iid``), label skew ``dirichlet:0.5``, ``#C=1``,
``#C=2`` and ``#C=3`` (``labels:K``: K labels per participant), quantity skew
``quantity:0.5``. Algorithms: FedAvg; FedProx (mu, ``--mu``, default 0.01); with
``--algorithms`` also FedAvgM (server momentum 0.9, server learning rate 0.1, so an
effective step of 1 as FedAvg's) and FedAdam (server learning rate 0.01, beta1 0.9, beta2
0.99, tau 0.001).

Each run is ``fedq.simulation.simulate`` in this process on the embedded broker; the test
accuracy is measured on the 10,000 test images after every round. Each partition's label
histogram (samples of each label per participant, the split each participant trains on) is
printed before its runs and kept in ``results.json``. ``--seeds`` draws the split and the
initial model with each seed given (the app's own, 42, by default; the reference's single
run is one draw, so how far a result is from it depends on the draw, and more seeds say by
how much). Written to
``--out`` (default ``bench/results/accuracy-quick`` or ``-full``): ``results.json`` (every
figure and the provenance: date, machine, versions, seeds), ``results.md`` (the table) and
``accuracy.png`` (accuracy per round, one panel per partition). The last line printed is
one JSON object with the table's figures.

A ``--full`` configuration takes hours here, so runs survive being stopped: each
federation keeps its state (fedq's ledger and checkpoints) in ``--out``/state/, and running
the same command again resumes it from its last committed round, as a restarted fedq
coordinator does; ``results.json`` is rewritten after every finished run, and a run already
in it with the same local epochs, rounds, mu and weight decay is not run again (``--rerun`` runs it
anyway). For a resumed run, "wall seconds" is the sum of its rounds' times.

A run can also be carried to another machine: only the last committed round's checkpoint
is kept (a coordinator resumes from it), so a run's state is its ledger and one checkpoint,
0.33 MB here. Stop the command (Ctrl-C, or ``kill -9``: a round is committed whole or not at
all), commit ``bench/results/accuracy-full/state/`` (the ledger's ``-wal`` file too), and
run the same command on the other machine. Its rounds' times then come from both.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fmnist_runs import fresh_app, provenance, run_isolated
from rich.console import Console

from fedq import strict_json
from fedq.apps import fmnist
from fedq.cli.partition import histogram_table, label_histogram
from fedq.coordinator.checkpoint import checkpoint_path
from fedq.coordinator.config import CoordinatorConfig, StrategyOptions
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.records import VersionSummary
from fedq.participant.app import Partition, TrainConfig
from fedq.participant.config import ParticipantConfig
from fedq.participant.partitions import split
from fedq.participant.scheme import Scheme
from fedq.plot import pyplot, save
from fedq.simulation import SimulationPlan, simulate

#: label -> fedq partition scheme
PARTITIONS = {
    "homogeneous": "iid",
    "dir(0.5)": "dirichlet:0.5",
    "#C=1": "labels:1",
    "#C=2": "labels:2",
    "#C=3": "labels:3",
    "quantity dir(0.5)": "quantity:0.5",
}
PROFILES = {"quick": (2, 10), "full": (10, 50)}  # local epochs, rounds
BATCH_SIZE = 64
#: NIID-Bench's local L2 regularisation (its ``--reg``, SGD's ``weight_decay``).
WEIGHT_DECAY = 1e-5


@dataclass(frozen=True)
class Algorithm:
    server_optimizer: str = "fedavg"
    server_lr: float = 1.0
    optimizer_options: StrategyOptions = field(default_factory=dict)
    proximal: bool = False


ALGORITHMS = {
    "fedavg": Algorithm(),
    "fedprox": Algorithm(proximal=True),
    "fedavgm": Algorithm("fedavgm", 0.1, {"momentum": 0.9}),
    "fedadam": Algorithm("fedadam", 0.01),
}


@dataclass
class Run:
    partition: str
    algorithm: str
    final_accuracy: float
    best_accuracy: float
    accuracy_per_round: list[float]
    seconds: float
    #: What it ran with, so results of different invocations can be merged or re-used.
    local_epochs: int = 0
    rounds: int = 0
    fedprox_mu: float = 0.0
    #: 0 in results written before runs had a weight decay.
    weight_decay: float = 0.0
    date: str = ""
    xla: bool = False
    #: What drew the split and the initial model (results written before it: the app's).
    seed: int = fmnist.SEED

    @property
    def key(self) -> tuple[str, str, int]:
        return self.partition, self.algorithm, self.seed


async def federate(
    partition: str, algorithm: str, seed: int, args: argparse.Namespace, state: Path
) -> list[dict[str, Any]]:
    """The federation's history: one row per committed round, from its first run on."""
    name = f"acc-{algorithm}-{list(PARTITIONS).index(partition)}{seed_suffix(seed)}"
    chosen = ALGORITHMS[algorithm]
    train = TrainConfig(
        epochs=args.epochs,
        batch_size=BATCH_SIZE,
        keep_optimizer=False,
        proximal_mu=args.mu if chosen.proximal else 0.0,
        weight_decay=args.weight_decay,
    )
    plan = SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=name,
            participants=args.participants,
            rounds=args.rounds,
            mode="sync",
            state_dir=state,
            server_optimizer=chosen.server_optimizer,
            server_lr=chosen.server_lr,
            optimizer_options=chosen.optimizer_options,
            round_timeout=3600.0,
        ),
        participant=ParticipantConfig(
            federation=name,
            participant_id="p",
            partition=Partition(scheme=Scheme.parse(PARTITIONS[partition])),
            train=train,
        ),
    )
    build = _with_xla(fmnist.build_niid_cnn) if args.xla else fmnist.build_niid_cnn
    app = fresh_app(build, train, seed)
    result = await simulate(plan, app, [KeepLastCheckpoint(state / "models")])
    return result.history


class KeepLastCheckpoint(CoordinatorObserver):
    """Deletes a version's checkpoint once the next one is committed, so that a run's state
    stays small enough to commit and carry to another machine. A resumed coordinator reads
    only its last committed version's checkpoint; one written for a version not committed
    yet is written again when the version is redone."""

    def __init__(self, models: Path) -> None:
        self.models = models

    def version_committed(self, row: VersionSummary) -> None:
        checkpoint_path(self.models, row.version - 1).unlink(missing_ok=True)


def _with_xla(build: Callable[[], Any]) -> Callable[[], Any]:
    """``build``, its model's training step compiled by XLA (``jit_compile``)."""

    def build_with_xla() -> Any:
        model = build()
        model.jit_compile = True
        return model

    return build_with_xla


def seed_suffix(seed: int) -> str:
    """What a seed adds to a run's names: nothing for the app's own (names from before)."""
    return "" if seed == fmnist.SEED else f"-seed{seed}"


def run_one(
    partition: str, algorithm: str, seed: int, args: argparse.Namespace, state: Path
) -> Run:
    """Run (or resume, from ``state``) one federation to its last round."""
    started = time.perf_counter()
    resumed = state.exists()
    history = run_isolated(lambda: federate(partition, algorithm, seed, args, state))
    accuracy = [row["metrics"]["accuracy"] for row in history]
    seconds = time.perf_counter() - started
    if resumed:
        seconds = sum(row["seconds"] for row in history)
    shutil.rmtree(state)
    return Run(
        partition=partition,
        algorithm=algorithm,
        final_accuracy=accuracy[-1],
        best_accuracy=max(accuracy),
        accuracy_per_round=accuracy,
        seconds=seconds,
        local_epochs=args.epochs,
        rounds=args.rounds,
        fedprox_mu=setting(algorithm, args)[2],
        weight_decay=args.weight_decay,
        date=time.strftime("%Y-%m-%d"),
        xla=args.xla,
        seed=seed,
    )


def previous_runs(path: Path) -> dict[tuple[str, str, int], Run]:
    """The runs an earlier invocation wrote to ``path`` (results.json), by key."""
    if not path.exists():
        return {}
    figures = json.loads(path.read_text())
    runs = []
    for row in figures["runs"]:
        proximal = ALGORITHMS[row["algorithm"]].proximal
        defaults = {  # the whole file's, for results written before runs carried their own
            "local_epochs": figures["local_epochs"],
            "rounds": figures["rounds"],
            "fedprox_mu": figures["fedprox_mu"] if proximal else 0.0,
        }
        runs.append(Run(**{**defaults, **row}))
    return {run.key: run for run in runs}


def setting(algorithm: str, args: argparse.Namespace) -> tuple[int, int, float, float]:
    """(local epochs, rounds, mu, weight decay): what makes two runs of one configuration
    the same."""
    mu = args.mu if ALGORITHMS[algorithm].proximal else 0.0
    return args.epochs, args.rounds, mu, args.weight_decay


def label_histograms(
    partitions: list[str], participants: int, seeds: list[int]
) -> dict[str, list[list[int]]]:
    """Each partition's samples per participant and label (Fashion-MNIST's 10 labels) for
    each seed, printed: the split every participant computes for itself from the seed.
    Keyed by the partition, followed by `` seed N`` for a seed not the app's."""
    _, labels = fmnist.load_train()
    out = Console(width=160, highlight=False)
    histograms = {}
    for partition in partitions:
        scheme = Scheme.parse(PARTITIONS[partition])
        for seed in seeds:
            names, counts = label_histogram(labels, split(labels, participants, scheme, seed))
            name = partition + ("" if seed == fmnist.SEED else f" seed {seed}")
            out.print(f"{name} ({scheme}), samples per label:")
            out.print(histogram_table(names, counts))
            histograms[name] = np.asarray(counts).tolist()
    return histograms


def table(runs: list[Run]) -> str:
    lines = [
        "| partition | algorithm | seed | weight decay | final accuracy | best accuracy "
        "| wall seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.partition} | {r.algorithm} | {r.seed} | {r.weight_decay:g} "
            f"| {100 * r.final_accuracy:.1f}% | {100 * r.best_accuracy:.1f}% | {r.seconds:.0f} |"
        )
    return "\n".join(lines)


def plot(runs: list[Run], path: Path, title: str) -> None:
    plt = pyplot()
    partitions = list(dict.fromkeys(r.partition for r in runs))
    columns = min(3, len(partitions))
    rows = -(-len(partitions) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False, constrained_layout=True
    )
    for axis, partition in zip(axes.flat, partitions, strict=False):
        for r in (r for r in runs if r.partition == partition):
            rounds = range(1, len(r.accuracy_per_round) + 1)
            label = r.algorithm + ("" if r.seed == fmnist.SEED else f", seed {r.seed}")
            axis.plot(rounds, [100 * a for a in r.accuracy_per_round], label=label)
        axis.set_title(partition)
        axis.set_xlabel("round")
        axis.set_ylabel("test accuracy %")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(partitions) :]:
        axis.set_visible(False)
    figure.suptitle(title)
    save(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="10 local epochs, 50 rounds")
    parser.add_argument("--epochs", type=int, help="local epochs (overrides the profile)")
    parser.add_argument("--rounds", type=int, help="rounds (overrides the profile)")
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--mu", type=float, default=0.01, help="FedProx's mu")
    parser.add_argument(
        "--weight-decay", type=float, default=WEIGHT_DECAY, help="local weight decay"
    )
    parser.add_argument(
        "--partitions", nargs="+", choices=list(PARTITIONS), default=list(PARTITIONS)
    )
    parser.add_argument(
        "--algorithms", nargs="+", choices=list(ALGORITHMS), default=["fedavg", "fedprox"]
    )
    parser.add_argument("--out", type=Path, help="results folder")
    parser.add_argument(
        "--xla", action="store_true", help="compile local training with XLA (jit_compile)"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[fmnist.SEED],
        help="draw the split and the initial model with each (default: the app's, 42)",
    )
    parser.add_argument(
        "--rerun", action="store_true", help="run again what --out's results already have"
    )
    args = parser.parse_args()
    profile = "full" if args.full else "quick"
    epochs, rounds = PROFILES[profile]
    args.epochs = args.epochs or epochs
    args.rounds = args.rounds or rounds
    out: Path = args.out or Path(__file__).parent / "results" / f"accuracy-{profile}"
    fmnist.check_files()
    print(
        f"NIID-Bench CNN on Fashion-MNIST ({profile}): {args.participants} participants, "
        f"{args.epochs} local epochs, {args.rounds} rounds, batch {BATCH_SIZE}, "
        f"SGD 0.01 momentum 0.9 fresh each round, weight decay {args.weight_decay:g}; "
        f"{os.cpu_count()} CPU cores",
        flush=True,
    )
    args.histograms = label_histograms(args.partitions, args.participants, args.seeds)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    done = previous_runs(out / "results.json")
    for partition, algorithm, seed in itertools.product(
        args.partitions, args.algorithms, args.seeds
    ):
        earlier = done.get((partition, algorithm, seed))
        epochs, rounds, mu, decay = setting(algorithm, args)
        same = earlier is not None and (
            (earlier.local_epochs, earlier.rounds, earlier.fedprox_mu, earlier.weight_decay)
            == (epochs, rounds, mu, decay)
        )
        if same and not args.rerun:
            print(f"  {partition:<18} {algorithm:<8} {seed:>4} in {out}/results.json already")
            continue
        index = list(PARTITIONS).index(partition)
        state = (
            out
            / "state"
            / (f"{index}-{algorithm}-e{epochs}-r{rounds}-mu{mu}-wd{decay}{seed_suffix(seed)}")
        )
        try:
            run = run_one(partition, algorithm, seed, args, state)
        except KeyboardInterrupt:
            print(
                f"stopped (Ctrl-C): {partition} {algorithm} seed {seed} keeps its committed "
                f"rounds in {state}; the same command resumes it",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
        print(
            f"  {partition:<18} {algorithm:<8} {seed:>4} {100 * run.final_accuracy:5.1f}% "
            f"(best {100 * run.best_accuracy:.1f}%) in {run.seconds:.0f} s",
            flush=True,
        )
        done[run.key] = run
        write(out, ordered(done), args, profile, time.perf_counter() - started)
    runs = ordered(done)
    text = write(out, runs, args, profile, time.perf_counter() - started)
    print()
    print(text)
    print(f"written to {out}/ (results.json, results.md, accuracy.png)")
    print(strict_json.dumps(json.loads((out / "results.json").read_text())))


def ordered(runs: dict[tuple[str, str, int], Run]) -> list[Run]:
    """By partition, then algorithm, in the order of PARTITIONS and ALGORITHMS, then seed
    (the app's first)."""
    rank = {key: i for i, key in enumerate(_keys())}
    return sorted(
        runs.values(),
        key=lambda r: (rank.get(r.key[:2], len(rank)), r.seed != fmnist.SEED, r.seed),
    )


def _keys() -> list[tuple[str, str]]:
    return [(p, a) for p in PARTITIONS for a in ALGORITHMS]


def write(out: Path, runs: list[Run], args: argparse.Namespace, profile: str, wall: float) -> str:
    """results.json, results.md and accuracy.png for ``runs``; returns the table."""
    text = table(runs)
    figures: dict[str, Any] = {
        "bench": "accuracy",
        "profile": profile,
        "participants": args.participants,
        "local_epochs": args.epochs,
        "rounds": args.rounds,
        "batch_size": BATCH_SIZE,
        "fedprox_mu": args.mu,
        "weight_decay": args.weight_decay,
        "label_histograms": args.histograms,
        "algorithms": {a: asdict(ALGORITHMS[a]) for a in dict.fromkeys(r.algorithm for r in runs)},
        "runs": [asdict(r) for r in runs],
        "wall_seconds": wall,
        **provenance(),
        "data_seed": sorted({r.seed for r in runs}),  # each run's is its own
    }
    (out / "results.json").write_text(strict_json.dumps(figures, indent=2) + "\n")
    (out / "results.md").write_text(text + "\n")
    plot(runs, out / "accuracy.png", f"fedq, NIID-Bench CNN, Fashion-MNIST ({profile})")
    return text


if __name__ == "__main__":
    main()
