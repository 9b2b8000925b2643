"""Stragglers at equal wall time: sync, quorum and async (FedBuff and its remedies).

    python bench/async_vs_sync.py [--budget-seconds 900] [--seeds 0 1 2] [--target 0.70]
    python bench/async_vs_sync.py --quick          # a smoke run: 1 seed, Dir(0.5), 45 s
    python bench/async_vs_sync.py --from bench/results/async-vs-sync/results.json --target 0.75
    python bench/async_vs_sync.py --schemes dirichlet:0.5 --seeds 0 --arms sync async  # a part
    python bench/async_vs_sync.py --schemes dirichlet:0.5 --kept  # report the parts kept

A user chooses a mode for a wall-clock budget, so every arm gets the same one: each
federation runs until ``--budget-seconds`` have passed since its coordinator opened the
first version (loading data, building models and tracing the training step, the same in
every arm, are left out: each participant trains once before, see ``warmed_app``) and
is then stopped; what it committed by then is its result. Fashion-MNIST (``fedq.apps.fmnist``'s
CNN), 10 participants of which 3 (p0, p1, p2) take 5x as long to train (after training
they wait 4x their training time), on Dir(0.5) and on NIID-Bench's #C=2 (``labels:2``),
for each of ``--seeds`` (the seed draws the split and the initial model). The arms:

- ``sync``: K = N = 10, every round waits for the slowest;
- ``quorum``: K = 7 of 10, a late update folded into the next round with s(tau);
- ``async``: FedBuff, a version every 5 updates, s(tau) = (1 + tau)^-0.5, refused as
  stale beyond 4 versions (``--async-remedy none``);
- ``async-fadas``: ``--async-remedy delay_adaptive``: every update kept with s(tau), the
  server step 1/tau_max when the stalest is more than 4 behind (FADAS);
- ``async-ca2fl``: ``--async-remedy cached``: every update kept, each participant's
  latest cached, each step calibrated with the cache (CA2FL);
- only when named in ``--arms``: ``async-fadas-k7`` and ``async-ca2fl-k7``, the same with
  a version every 7 updates (``async-ca2fl-k7`` is fedq's default async mode, K = 7), and
  ``async-mifa-k7``: ``--async-remedy cached_mean``, each version the mean of every
  participant's latest local model (MIFA), K = 7.

The test accuracy of every version committed within the budget (``--eval-images`` of the
10,000 test images), stamped with the seconds from the start to its commit. It is measured
after the budget, from the checkpoints, so that evaluating (the harness's cost, about 1.3 s
a version here) is not in the wall time: an arm that makes more versions would pay more of
it. Reported per arm and partition, the mean over seeds (and each seed in results.json):
seconds to the partition's target (``TARGETS``: the accuracy sync reaches at about an
eighth of the budget, 70% for Dir(0.5) and 45% for #C=2; ``--target`` for all) and in how
many seeds it was reached, accuracy at the end of the budget, best accuracy, the largest
drop after the target was first reached (the deepest fall below the best so far, in
points), and every participant's share of the folded updates in each window of 10
consecutive versions (the smallest share any participant had in a full window: 0 means
someone was left out). ``accuracy.png`` plots the mean accuracy against time with a band
from the lowest to the highest seed, one panel per partition. Written to ``--out``
(``results.json``, ``accuracy.png``); the last line printed is one JSON object.

The whole grid is hours of machine time, so it can be measured in parts: every finished
run is written at once to ``--out``/runs/ (one JSON file per partition, seed, arm and budget,
with where, on which CPU and when it was measured), and the report covers every run asked
for, old and new. The arms of one seed are timed on one CPU (machines of one name here
have differed by a factor of two in speed, and arms timed on different ones would not
compare), and each is compared with the sync run of its own seed; the seeds may have
been timed on different CPUs. So a seed whose arms are all kept on one CPU is read, and
any other is measured here (but for arms kept from this CPU). Commit the run files to
carry a part over to another session or machine.

Measured on a loaded, shared machine the times mean little: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fmnist_runs import cpu, fresh_app, provenance, run_isolated

from fedq import strict_json
from fedq.apps import fmnist
from fedq.apps.keras_app import KerasApp
from fedq.coordinator.checkpoint import checkpoint_path, map_checkpoint
from fedq.coordinator.config import AsyncRemedy, CoordinatorConfig, Mode
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.records import VersionSummary
from fedq.participant.app import Partition, app_train_config
from fedq.participant.config import ParticipantConfig
from fedq.participant.scheme import Scheme
from fedq.plot import pyplot, save
from fedq.scenario import ParticipantProfile
from fedq.simulation import SimulationPlan, simulate

PARTICIPANTS = 10
SLOW = (0, 1, 2)
SLOWDOWN = 5.0
SCHEMES = ("dirichlet:0.5", "labels:2")
#: Each partition's target: the accuracy sync reaches at about an eighth of the budget.
#: Dir(0.5): 70%, sync's second version, at 89 to 111 s of 900 on 3 seeds. #C=2: 45%, sync's
#: fourth version, at 114 s of 900 on seed 0, set from that sync run alone, before any
#: async run of #C=2 had finished. ``--target`` sets one for every partition.
TARGETS = {"dirichlet:0.5": 0.70, "labels:2": 0.45}
#: Versions per window of the participants' shares.
WINDOW = 10
#: Versions no arm reaches within a budget: the budget stops each run.
UNBOUNDED = 1_000_000
#: How a run is measured; a kept run measured otherwise is measured again. 1: the
#: coordinator evaluated each version within the wall time, and the participants' first
#: training (loading their data, tracing) was in it; 2: evaluated after the run, the
#: participants warmed up before it.
HARNESS = 2


@dataclass(frozen=True)
class Arm:
    name: str
    mode: Mode
    k: int
    remedy: AsyncRemedy = "none"


ARMS = (
    Arm("sync", "sync", PARTICIPANTS),
    Arm("quorum", "quorum", 7),
    Arm("async", "async", 5),
    Arm("async-fadas", "async", 5, "delay_adaptive"),
    Arm("async-ca2fl", "async", 5, "cached"),
)
#: Measured only when asked for (``--arms``): the remedies with a buffer of 7, as many as
#: the participants that are not slow, so that a version waits for about one update of
#: each of them, as a quorum of 7 does.
MORE_ARMS = (
    Arm("async-fadas-k7", "async", 7, "delay_adaptive"),
    Arm("async-ca2fl-k7", "async", 7, "cached"),
    Arm("async-mifa-k7", "async", 7, "cached_mean"),
)


@dataclass
class Run:
    arm: str
    scheme: str
    seed: int
    budget: float
    #: (seconds since start, accuracy) after each version committed within the budget.
    curve: list[tuple[float, float]] = field(default_factory=list)
    #: Who sent the updates of each version, in version order.
    contributors: list[list[str]] = field(default_factory=list)
    #: The CPU it was timed on (``fmnist_runs.cpu``); None when not recorded.
    cpu: str | None = None
    #: Each version's test accuracy per label (label 0 first), in version order; empty
    #: for runs measured before it was kept.
    label_accuracy: list[list[float]] = field(default_factory=list)

    def seconds_to(self, target: float) -> float | None:
        return next((t for t, a in self.curve if a >= target), None)

    @property
    def at_budget(self) -> float | None:
        return self.curve[-1][1] if self.curve else None

    @property
    def best(self) -> float | None:
        return max((a for _, a in self.curve), default=None)

    def drop_after(self, target: float) -> float | None:
        """The deepest fall below the best so far once ``target`` was first reached, in
        points (None: never reached)."""
        reached = self.seconds_to(target)
        if reached is None:
            return None
        peak, drop = 0.0, 0.0
        for t, a in self.curve:
            if t >= reached:
                peak = max(peak, a)
                drop = max(drop, peak - a)
        return 100 * drop

    def shares(self) -> list[dict[str, float]]:
        """Each participant's share of the folded updates, per window of WINDOW versions
        (only full windows, unless there is none)."""
        windows = [
            self.contributors[i : i + WINDOW] for i in range(0, len(self.contributors), WINDOW)
        ]
        full = [w for w in windows if len(w) == WINDOW] or windows[:1]
        out = []
        for window in full:
            counts = Counter(p for version in window for p in version)
            total = sum(counts.values())
            out.append({f"p{i}": counts[f"p{i}"] / total for i in range(PARTICIPANTS)})
        return out

    @property
    def file_name(self) -> str:
        return f"{self.scheme.replace(':', '-')}-seed{self.seed}-{self.arm}-{self.budget:g}s.json"

    def measurement(self) -> dict[str, Any]:
        """What a run's own file keeps: what was measured, nothing read off it at a
        target (a target is the report's choice, so the figures go to results.json)."""
        return {
            "arm": self.arm,
            "scheme": self.scheme,
            "seed": self.seed,
            "budget": self.budget,
            "cpu": self.cpu,
            "contributors": self.contributors,
            "curve": self.curve,
            "label_accuracy": self.label_accuracy,
        }

    def record(self, target: float) -> dict[str, Any]:
        """What results.json keeps of a run: the figures read at ``target``, then the
        measurement (its curve and contributors last: they are long)."""
        measured = self.measurement()
        return {
            **{key: measured.pop(key) for key in ("arm", "scheme", "seed", "budget")},
            "seconds_to_target": self.seconds_to(target),
            "accuracy_at_budget": self.at_budget,
            "best_accuracy": self.best,
            "largest_drop_points": self.drop_after(target),
            "shares": self.shares(),
            **measured,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Run:
        return cls(
            r["arm"],
            r["scheme"],
            r["seed"],
            r["budget"],
            [(t, a) for t, a in r["curve"]],
            r["contributors"],
            r.get("cpu"),
            r.get("label_accuracy", []),
        )

    def smallest_share(self) -> float | None:
        """The smallest share any participant had in a full window (None: no full one)."""
        if len(self.contributors) < WINDOW:
            return None
        return min((min(w.values()) for w in self.shares()), default=None)


class Stamps(CoordinatorObserver):
    """Every version committed within the budget, stamped with the seconds since the
    coordinator opened its first version (the clock starts there, so that loading the
    data and building the models, the same in every arm, is not in the budget)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.started: float | None = None
        self.opened = asyncio.Event()
        #: (seconds since the start, version) of each version committed within the budget.
        self.committed: list[tuple[float, int]] = []

    def version_opened(self, version: int, round_: int | None) -> None:
        if self.started is None:
            self.started = time.perf_counter()
            self.opened.set()

    def version_committed(self, row: VersionSummary) -> None:
        assert self.started is not None, "a version is opened before it is committed"
        seconds = time.perf_counter() - self.started
        if seconds <= self.run.budget:
            self.committed.append((seconds, row.version))
            self.run.contributors.append(list(row.participants))


def warmed_app(scheme: str, seed: int) -> KerasApp:
    """The fmnist app whose split and initial model are drawn with ``seed`` (not
    evaluating: ``run_one`` scores the versions itself), with every participant's share
    of the data loaded, its model built and its training step traced, by one local
    training each, untimed.

    The budget leaves out what every arm does once before it learns, but Keras does these
    on a model's first ``fit``: 2.3 s more than a later one here, for each of the 10
    participants, on two cores, so the first version came at 33 s and the next ones every
    11 s. The warm-up changes no result: each round sets the model's weights and resets
    its optimizer."""
    app = fresh_app(seed=seed, load_test=None)
    weights, config = app.initial_weights(), app_train_config(app)
    for index in range(PARTICIPANTS):
        app.train(weights, Partition(index, PARTICIPANTS, Scheme.parse(scheme)), config)
    return app


async def federate(
    arm: Arm, scheme: str, seed: int, budget: float, state: Path, app: KerasApp
) -> Stamps:
    """One arm's federation of ``app`` for ``budget`` seconds."""
    name = f"avs-{arm.name}-{seed}"
    plan = SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=name,
            participants=PARTICIPANTS,
            rounds=UNBOUNDED,
            mode=arm.mode,
            quorum=None if arm.mode == "sync" else arm.k,
            late_updates="fold",
            staleness_exponent=0.5,
            async_remedy=arm.remedy,
            state_dir=state,
            round_timeout=3600.0,
            linger_seconds=0.0,
        ),
        participant=ParticipantConfig(
            federation=name, participant_id="p", partition=Partition(scheme=Scheme.parse(scheme))
        ),
        profiles=tuple(ParticipantProfile(i, slowdown=SLOWDOWN) for i in SLOW),
    )
    stamps = Stamps(Run(arm.name, scheme, seed, budget))
    federation = asyncio.ensure_future(simulate(plan, app, [stamps]))
    opened = asyncio.ensure_future(stamps.opened.wait())
    await asyncio.wait({federation, opened}, return_when=asyncio.FIRST_COMPLETED)
    opened.cancel()
    # Once the budget is spent, what was committed within it is the result.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(federation, budget)
    return stamps


def run_one(arm: Arm, scheme: str, seed: int, budget: float, eval_images: int) -> Run:
    """One arm's run: the participants warmed up (``warmed_app``), the federation in its
    budget, then (untimed) the test accuracy of every version it committed, read from the
    checkpoints its state dir keeps.

    The coordinator does not evaluate while the budget runs: its evaluation sits between
    one version's commit and the next one's publication, and on this machine it takes
    1.3 to 2.6 s of the two cores (10,000 images), so an arm's time would depend on how
    many versions it made, which is what is being compared."""
    with tempfile.TemporaryDirectory(prefix="fedq-async-vs-sync-") as state:
        app = warmed_app(scheme, seed)
        stamps = run_isolated(lambda: federate(arm, scheme, seed, budget, Path(state), app))
        x, y = fmnist.load_test()
        x, y = x[:eval_images], y[:eval_images]
        models = Path(state) / "models"
        run = stamps.run
        scorer = app.model_of(app.initial_weights())
        for seconds, version in stamps.committed:
            weights = map_checkpoint(checkpoint_path(models, version))
            scorer.set_weights(list(weights.values()))
            right = np.argmax(scorer.predict(x, batch_size=1000, verbose=0), axis=1) == y
            run.curve.append((seconds, float(right.mean())))
            run.label_accuracy.append(label_accuracy(right, y))
        return run


def label_accuracy(right: np.ndarray, labels: np.ndarray) -> list[float]:
    """The share of ``right`` predictions among the examples of each label, label 0 first
    (what a label-skewed partition can cost one label and not the mean)."""
    return [float(right[labels == label].mean()) for label in range(int(labels.max()) + 1)]


def measure(
    arms: Sequence[Arm],
    schemes: Sequence[str],
    seeds: Sequence[int],
    budget: float,
    eval_images: int,
    store: Path,
    *,
    kept_only: bool = False,
) -> list[Run]:
    """Every run asked for: read from ``store`` when it compares (see ``reusable``), else
    measured now and written there at once; with ``kept_only``, the kept ones alone (the
    arms of a seed that were all timed on one CPU), nothing measured."""
    print(
        f"fmnist CNN, {PARTICIPANTS} participants, p{', p'.join(map(str, SLOW))} {SLOWDOWN:g}x "
        f"slower; {budget:g} s per run; seeds {list(seeds)}; {', '.join(schemes)}; "
        f"{os.cpu_count()} CPU cores",
        flush=True,
    )
    store.mkdir(parents=True, exist_ok=True)
    here = cpu()
    runs = []
    for scheme in schemes:
        for seed in seeds:
            paths = {a.name: store / Run(a.name, scheme, seed, budget).file_name for a in arms}
            kept = {n: json.loads(p.read_text()) for n, p in paths.items() if p.exists()}
            reuse = reusable(kept, set(kept if kept_only else paths), eval_images, here)
            for arm in arms:
                record = reuse.get(arm.name)
                if record is not None:
                    run, origin = Run.from_record(record), f"kept, {record['date']}"
                elif kept_only:
                    continue
                else:
                    run = run_one(arm, scheme, seed, budget, eval_images)
                    run.cpu = here
                    origin = measured_why(kept.get(arm.name), eval_images)
                    record = {
                        **run.measurement(),
                        "eval_images": eval_images,
                        "harness": HARNESS,
                        **provenance(),
                    }
                    paths[arm.name].write_text(strict_json.dumps(record, indent=2) + "\n")
                print(
                    f"  {scheme:<14} seed {seed} {arm.name:<14} {len(run.curve):>4} versions, "
                    f"at budget {pct(run.at_budget)}, best {pct(run.best)}, smallest share "
                    f"{pct(run.smallest_share())} ({origin})",
                    flush=True,
                )
                runs.append(run)
    return runs


def reusable(
    kept: dict[str, dict[str, Any]], asked: set[str], eval_images: int, here: str
) -> dict[str, dict[str, Any]]:
    """The kept runs of one partition and seed that need not be measured again, by arm.

    The arms of one seed are compared with each other (the speed-up is taken per seed),
    so they must be timed on one CPU: machines of one name here have differed by a factor
    of two in speed. The seeds need not share one, so a grid can be measured over
    sessions on different machines. Hence: every arm asked for kept (by this harness, with
    these test images) on one recorded CPU: all are read. Otherwise only those timed on
    this CPU are, and the others are measured here."""
    same = {n: r for n, r in kept.items() if comparable(r, eval_images)}
    cpus = {r.get("cpu") for r in same.values()}
    if same.keys() == asked and len(cpus) == 1 and None not in cpus:
        return same
    return {n: r for n, r in same.items() if r.get("cpu") == here}


def comparable(kept: dict[str, Any], eval_images: int) -> bool:
    """Whether a kept run was measured as this harness measures, on these test images."""
    return kept.get("harness", 1) == HARNESS and kept["eval_images"] == eval_images


def measured_why(kept: dict[str, Any] | None, eval_images: int) -> str:
    """Why a run was measured rather than read: none was kept, or the kept one does not
    compare (other test images, or timed on a CPU other than this one, where its seed's
    other arms are timed)."""
    if kept is None:
        return "measured"
    if kept.get("harness", 1) != HARNESS:
        return "measured again: by an older harness (evaluating, warming up in the wall time)"
    if kept["eval_images"] != eval_images:
        return "measured again: other test images"
    return f"measured again: the kept run was on {kept.get('cpu', 'a CPU not recorded')}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None and not math.isnan(v)]
    return sum(known) / len(known) if known else None


def target_of(scheme: str, chosen: float | None) -> float:
    """The target a partition's runs are read at: ``--target`` if given, else its own."""
    return chosen if chosen is not None else TARGETS.get(scheme, 0.70)


def summarise(runs: list[Run], chosen: float | None) -> list[dict[str, Any]]:
    """Per partition and arm, the means over seeds, and how each arm compares with sync.

    The comparisons with sync are taken seed by seed, against the sync run of the same
    seed (timed on the same CPU), then averaged: seeds may have been timed on different
    machines, whose speeds differ."""
    rows = []
    for scheme in dict.fromkeys(r.scheme for r in runs):
        group = [r for r in runs if r.scheme == scheme]
        target = target_of(scheme, chosen)
        by_arm: dict[str, list[Run]] = {}
        for run in group:
            by_arm.setdefault(run.arm, []).append(run)
        sync = {r.seed: r for r in by_arm.get("sync", [])}
        for arm, arm_runs in by_arm.items():
            pairs = [(r, sync[r.seed]) for r in arm_runs if r.seed in sync]
            drops = [r.drop_after(target) for r in arm_runs]
            shares = [r.smallest_share() for r in arm_runs]
            rows.append(
                {
                    "scheme": scheme,
                    "target": target,
                    "arm": arm,
                    "seeds": [r.seed for r in arm_runs],
                    "cpus": sorted({r.cpu or "not recorded" for r in arm_runs}),
                    "versions": mean([len(r.curve) for r in arm_runs]),
                    "seconds_to_target": mean([r.seconds_to(target) for r in arm_runs]),
                    "reached_target": sum(r.seconds_to(target) is not None for r in arm_runs),
                    "speedup_vs_sync": mean([speedup(r, s, target) for r, s in pairs]),
                    "accuracy_at_budget": mean([r.at_budget for r in arm_runs]),
                    "points_vs_sync": mean([points_above(r, s) for r, s in pairs]),
                    "best_accuracy": mean([r.best for r in arm_runs]),
                    "largest_drop_points": max((d for d in drops if d is not None), default=None),
                    "smallest_share": min((s for s in shares if s is not None), default=None),
                    "everyone_every_window": None
                    if any(s is None for s in shares)
                    else all(s > 0 for s in shares if s is not None),
                }
            )
    return rows


def speedup(run: Run, sync: Run, target: float) -> float | None:
    """How many times sooner than sync ``run`` reached the target (None: one did not)."""
    mine, theirs = run.seconds_to(target), sync.seconds_to(target)
    return None if mine is None or theirs is None else theirs / mine


def points_above(run: Run, sync: Run) -> float | None:
    """How many points above sync's ``run`` ended its budget."""
    if run.at_budget is None or sync.at_budget is None:
        return None
    return 100 * (run.at_budget - sync.at_budget)


def report(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'partition':<14} {'arm':<14} {'vers':>5} {'to target s':>11} {'reached':>7} "
        f"{'speed-up':>8} {'at budget':>9} {'vs sync':>7} {'best':>6} {'drop':>5} {'min share':>9}"
    )

    def num(value: float | None, form: str) -> str:
        return "-" if value is None else format(value, form)

    for row in rows:
        print(
            f"{row['scheme']:<14} {row['arm']:<14} {num(row['versions'], '.0f'):>5} "
            f"{num(row['seconds_to_target'], '.0f'):>11} "
            f"{str(row['reached_target']) + '/' + str(len(row['seeds'])):>7} "
            f"{num(row['speedup_vs_sync'], '.2f') + ('x' if row['speedup_vs_sync'] else ''):>8} "
            f"{pct(row['accuracy_at_budget']):>9} {num(row['points_vs_sync'], '+.1f'):>7} "
            f"{pct(row['best_accuracy']):>6} {num(row['largest_drop_points'], '.1f'):>5} "
            f"{pct(row['smallest_share']):>9}"
        )


def curve_on(run: Run, grid: np.ndarray) -> np.ndarray:
    """The run's accuracy at each time of ``grid``: the last version committed by then
    (NaN before the first)."""
    times = np.array([t for t, _ in run.curve])
    accuracy = np.array([a for _, a in run.curve])
    at = np.searchsorted(times, grid, side="right") - 1
    return np.where(at >= 0, accuracy[np.clip(at, 0, None)] if len(accuracy) else np.nan, np.nan)


def plot(runs: list[Run], chosen: float | None, path: Path) -> None:
    plt = pyplot()
    schemes = list(dict.fromkeys(r.scheme for r in runs))
    figure, axes = plt.subplots(
        1, len(schemes), figsize=(7 * len(schemes), 4.2), constrained_layout=True, squeeze=False
    )
    budget = max(r.budget for r in runs)
    grid = np.linspace(0, budget, 200)
    for axis, scheme in zip(axes[0], schemes, strict=True):
        for arm in dict.fromkeys(r.arm for r in runs if r.scheme == scheme):
            curves = np.array(
                [curve_on(r, grid) for r in runs if r.scheme == scheme and r.arm == arm]
            )
            with warnings.catch_warnings():  # an all-NaN column (before any version)
                warnings.simplefilter("ignore", category=RuntimeWarning)
                middle = np.nanmean(curves, axis=0)
                low, high = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
            (line,) = axis.plot(grid, 100 * middle, label=arm)
            axis.fill_between(grid, 100 * low, 100 * high, color=line.get_color(), alpha=0.2)
        target = 100 * target_of(scheme, chosen)
        axis.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}%")
        axis.set_xlabel("wall seconds")
        axis.set_ylabel("test accuracy %")
        axis.set_title(f"{scheme}, {len(SLOW)} of {PARTICIPANTS} {SLOWDOWN:g}x slower")
        axis.grid(alpha=0.3)
        axis.legend()
    save(figure, path)


def reload(path: Path) -> tuple[list[Run], dict[str, Any]]:
    """The runs of an earlier results.json: the curves are the measurement, the target
    only reads them."""
    data = json.loads(path.read_text())
    runs = [Run.from_record(r) for r in data["runs"]]
    return runs, {k: data[k] for k in data if k in PROVENANCE_KEYS}


PROVENANCE_KEYS = ("date", "machine", "cpu_count", "platform", "python", "versions", "data_seed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-seconds", type=float, default=900.0, help="wall time per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    parser.add_argument(
        "--arms",
        nargs="+",
        default=[a.name for a in ARMS],
        choices=[a.name for a in ARMS + MORE_ARMS],
    )
    parser.add_argument(
        "--target",
        type=float,
        help="target test accuracy, for every partition (default: each its own, TARGETS)",
    )
    parser.add_argument(
        "--eval-images", type=int, default=10_000, help="test images evaluated per version"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 seed, Dir(0.5) only, 45 s per run, 2,000 test images",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where results.json, accuracy.png and runs/ go (default: bench/results/"
        "async-vs-sync, or a temporary folder with --quick)",
    )
    parser.add_argument(
        "--kept",
        action="store_true",
        help="report the runs kept in runs/ for these seeds and arms, measuring none "
        "(a seed whose arms were timed on different CPUs: only those timed on this one)",
    )
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="re-read the curves of an earlier results.json instead of running (new --target)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.schemes = args.seeds[:1], args.schemes[:1]
        args.budget_seconds, args.eval_images = min(args.budget_seconds, 45.0), 2000
    if args.out is None:
        args.out = (
            Path(tempfile.gettempdir()) / "fedq-async-vs-sync-quick"
            if args.quick
            else Path(__file__).parent / "results" / "async-vs-sync"
        )
    if args.source is not None:
        runs, measured = reload(args.source)
    else:
        fmnist.check_files()
        arms = [a for a in ARMS + MORE_ARMS if a.name in args.arms]
        runs = measure(
            arms,
            args.schemes,
            args.seeds,
            args.budget_seconds,
            args.eval_images,
            args.out / "runs",
            kept_only=args.kept,
        )
        measured = provenance()
    rows = summarise(runs, args.target)
    report(rows)
    figures: dict[str, Any] = {
        "bench": "async_vs_sync",
        "participants": PARTICIPANTS,
        "slow": list(SLOW),
        "slowdown": SLOWDOWN,
        "budget_seconds": max((r.budget for r in runs), default=None),
        "target": {s: target_of(s, args.target) for s in dict.fromkeys(r.scheme for r in runs)},
        "eval_images": args.eval_images,
        "window_versions": WINDOW,
        "summary": rows,
        **measured,
    }
    per_run = [r.record(target_of(r.scheme, args.target)) for r in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        strict_json.dumps({**figures, "runs": per_run}, indent=2) + "\n"
    )
    if runs:
        plot(runs, args.target, args.out / "accuracy.png")
    print(f"written to {args.out}/ (results.json, accuracy.png)")
    print(strict_json.dumps(figures))


if __name__ == "__main__":
    main()
