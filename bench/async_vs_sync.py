"""Stragglers: wall-clock time to a target accuracy in sync, quorum and async (FedBuff) mode.

    python bench/async_vs_sync.py [--rounds 10] [--target 0.70]
    python bench/async_vs_sync.py --from bench/results/async-vs-sync/results.json --target 0.75

Fashion-MNIST (``fedq.apps.fmnist:app``'s CNN), label skew Dirichlet(0.5), 10
participants of which 3 (p0, p1, p2) take 5x as long to train (``--slow``-style
stragglers: after training they wait 4x their training time). Each mode gets the same
budget of updates, 10 x ``--rounds``, and starts from the same model:

- sync: every round waits for all 10, so for the slowest; ``--rounds`` rounds.
- quorum: a round closes with the first 7 updates; a straggler's update arriving after its
  round closed is folded into the current one, weighted by its staleness
  ((1 + tau)^-0.5); 10/7 x as many rounds.
- async (FedBuff): no rounds, a version every 5 updates from any base version, staleness
  weighted as above; twice as many versions.

Each run is ``fedq.simulation.simulate`` in this process on the embedded broker; the test
accuracy (10,000 images) is measured after every version, stamped with the wall time since
the run started. Reported: seconds to reach ``--target`` (None if never), the speed-up
against sync, the final accuracy and its difference to sync in points. Written to
``--out`` (default ``bench/results/async-vs-sync``): ``results.json`` and ``accuracy.png``
(accuracy against time, one line per mode). The last line printed is one JSON object.
``--from`` re-reads an earlier ``results.json`` and reports it against another target: the
curves are the measurement, the target only reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmnist_runs import fresh_app, provenance, run_isolated

from fedq import strict_json
from fedq.apps import fmnist
from fedq.coordinator.config import CoordinatorConfig, Mode
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.records import VersionSummary
from fedq.participant.app import Partition
from fedq.participant.config import ParticipantConfig
from fedq.participant.scheme import Scheme
from fedq.plot import pyplot, save
from fedq.scenario import ParticipantProfile
from fedq.simulation import SimulationPlan, simulate

PARTICIPANTS = 10
SLOW = (0, 1, 2)
SLOWDOWN = 5.0
SCHEME = "dirichlet:0.5"
#: mode -> K (updates per version)
QUORUM = {"sync": PARTICIPANTS, "quorum": 7, "async": 5}


@dataclass
class Run:
    mode: str
    versions: int
    #: (seconds since start, accuracy) after each version
    curve: list[tuple[float, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_accuracy(self) -> float:
        return self.curve[-1][1]

    def seconds_to(self, target: float) -> float | None:
        return next((t for t, a in self.curve if a >= target), None)


class Stamps(CoordinatorObserver):
    """Stamps every committed version with the wall time since the run started."""

    def __init__(self, run: Run, started: float) -> None:
        self.run, self.started = run, started

    def version_committed(self, row: VersionSummary) -> None:
        accuracy = row.metrics.get("accuracy", float("nan"))
        self.run.curve.append((time.perf_counter() - self.started, accuracy))


async def federate(mode: Mode, versions: int, state: Path) -> Run:
    name = f"avs-{mode}"
    plan = SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=name,
            participants=PARTICIPANTS,
            rounds=versions,
            mode=mode,
            quorum=None if mode == "sync" else QUORUM[mode],
            late_updates="fold",
            staleness_exponent=0.5,
            state_dir=state,
            round_timeout=3600.0,
            linger_seconds=0.0,
        ),
        participant=ParticipantConfig(
            federation=name, participant_id="p", partition=Partition(scheme=Scheme.parse(SCHEME))
        ),
        profiles=tuple(ParticipantProfile(i, slowdown=SLOWDOWN) for i in SLOW),
    )
    run = Run(mode, versions)
    started = time.perf_counter()
    await simulate(plan, fresh_app(), [Stamps(run, started)])
    run.seconds = time.perf_counter() - started
    return run


def run_one(mode: Mode, versions: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="fedq-async-vs-sync-") as state:
        return run_isolated(lambda: federate(mode, versions, Path(state)))


def plot(runs: list[Run], target: float, path: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for run in runs:
        axis.plot(
            [t for t, _ in run.curve],
            [100 * a for _, a in run.curve],
            marker="o",
            markersize=3,
            label=f"{run.mode} (K={QUORUM[run.mode]})",
        )
    axis.axhline(100 * target, color="grey", linestyle="--", linewidth=1, label="target")
    axis.set_xlabel("wall seconds")
    axis.set_ylabel("test accuracy %")
    axis.set_title(
        f"Fashion-MNIST, Dir(0.5), {PARTICIPANTS} participants, {len(SLOW)} of them "
        f"{SLOWDOWN:g}x slower"
    )
    axis.grid(alpha=0.3)
    axis.legend()
    save(figure, path)


def measure(rounds: int, target: float) -> list[Run]:
    budget = PARTICIPANTS * rounds
    modes: tuple[Mode, ...] = ("sync", "quorum", "async")
    print(
        f"fmnist CNN, {SCHEME}, {PARTICIPANTS} participants, p{', p'.join(map(str, SLOW))} "
        f"{SLOWDOWN:g}x slower; {budget} updates per mode; target {100 * target:.0f}%; "
        f"{os.cpu_count()} CPU cores",
        flush=True,
    )
    runs = []
    for mode in modes:
        run = run_one(mode, -(-budget // QUORUM[mode]))
        reached = run.seconds_to(target)
        print(
            f"  {mode:<7} {run.versions:>3} versions in {run.seconds:5.0f} s, final "
            f"{100 * run.final_accuracy:.1f}%, target at "
            f"{'never' if reached is None else f'{reached:.0f} s'}",
            flush=True,
        )
        runs.append(run)
    return runs


def reload(path: Path) -> tuple[list[Run], dict[str, Any]]:
    """The runs of an earlier results.json: the curves are the measurement, the target
    only reads them, so another target needs no new federations."""
    data = json.loads(path.read_text())
    runs = [
        Run(r["mode"], r["versions"], [(t, a) for t, a in r["curve"]], r["seconds"])
        for r in data["runs"]
    ]
    return runs, {k: data[k] for k in data if k in PROVENANCE_KEYS}


PROVENANCE_KEYS = ("date", "machine", "cpu_count", "platform", "python", "versions", "data_seed")


def report(runs: list[Run], target: float) -> list[dict[str, Any]]:
    sync = runs[0]
    base = sync.seconds_to(target)
    rows = []
    print(
        f"\n{'mode':<7} {'K':>3} {'versions':>8} {'to target s':>11} {'speed-up':>8} "
        f"{'final %':>7} {'vs sync':>7} {'total s':>7}"
    )
    for run in runs:
        reached = run.seconds_to(target)
        speedup = None if reached is None or base is None else base / reached
        points = 100 * (run.final_accuracy - sync.final_accuracy)
        rows.append(
            {
                "mode": run.mode,
                "k": QUORUM[run.mode],
                "versions": run.versions,
                "seconds_to_target": reached,
                "speedup_vs_sync": speedup,
                "final_accuracy": run.final_accuracy,
                "points_vs_sync": points,
                "seconds": run.seconds,
                "curve": run.curve,
            }
        )
        print(
            f"{run.mode:<7} {QUORUM[run.mode]:>3} {run.versions:>8} "
            f"{'-' if reached is None else f'{reached:.0f}':>11} "
            f"{'-' if speedup is None else f'{speedup:.2f}x':>8} "
            f"{100 * run.final_accuracy:>7.2f} {points:>+7.2f} {run.seconds:>7.0f}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="sync rounds (the budget)")
    parser.add_argument("--target", type=float, default=0.70, help="target test accuracy")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "async-vs-sync"
    )
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="re-read the curves of an earlier results.json instead of running (new --target)",
    )
    args = parser.parse_args()
    if args.source is not None:
        runs, measured = reload(args.source)
    else:
        fmnist.check_files()
        runs, measured = measure(args.rounds, args.target), provenance()
    figures: dict[str, Any] = {
        "bench": "async_vs_sync",
        "participants": PARTICIPANTS,
        "slow": list(SLOW),
        "slowdown": SLOWDOWN,
        "scheme": SCHEME,
        "target": args.target,
        "updates_per_mode": sum(QUORUM[r.mode] * r.versions for r in runs[:1]),
        "runs": report(runs, args.target),
        **measured,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(strict_json.dumps(figures, indent=2) + "\n")
    plot(runs, args.target, args.out / "accuracy.png")
    print(f"written to {args.out}/ (results.json, accuracy.png)")
    print(strict_json.dumps(figures))


if __name__ == "__main__":
    main()
