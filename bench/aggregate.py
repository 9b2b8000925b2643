"""Aggregation cost next to numpy's ``acc += w * x`` over the same bytes, in one run.

    python bench/aggregate.py [--params 10000000] [--updates 10] [--repeat 5]

Updates are P float32 values (default 10 M = 40 MB) in 8 tensors of P/8, encoded once
with ``encode_message`` (raw codec) outside the timing. Every figure is single-threaded,
warmed up once, the median of ``--repeat`` runs (``time.perf_counter``).

1. numpy baseline, one update: ``x`` is a read-only float32 view of the update's P values
   (aligned, as ``np.frombuffer`` over a ``bytes``), ``acc`` a float32 accumulator. The
   minimal honest form ``np.multiply(x, w, out=scratch); acc += scratch`` is the
   denominator of every ratio; the plain ``acc += w * x`` (a fresh temporary) is shown too.
2. fedq, one update, as the coordinator does it: ``Intake.check`` (admission that admits,
   digest lookups that find nothing) then ``WeightedMean`` ``add`` of the verdict's
   deltas. Shown split into decode + schema (``decode_message`` + ``UpdateMeta``), body
   digest (xxh3-128), tensor checks (names, shapes, dtypes, finite values) and fold, and
   as measured totals (``check`` alone, ``check`` + fold). Target: the streaming path of
   one update (check + fold) within 2x the numpy baseline. The diagnostic rows redo the
   tensor checks and the fold over aligned copies of the same deltas: decoded tensors are
   views at whatever offset msgpack put them, mostly not 4-byte aligned.
3. robust rules over ``--updates`` K such updates (decoded once, outside the timing):
   coordinate median and trimmed mean (trim_fraction 0.1) started with a real
   ``AggregationContext``. "add" is ``start`` + K ``add`` (each copies its update into
   the (K, P) stack), "result" is ``result()``. "ram" has a budget that holds the stack;
   "spill" a budget of 1 byte, so the stack is a memory-mapped file in a temporary
   directory (with RAM to spare the page cache absorbs it: this is the mmap path, not the
   disk). Ratios are against K numpy folds, measured as K minimal folds over K updates.

Reading it: a ratio is fedq seconds / numpy seconds for the same update bytes, so 1.0 is
numpy speed and GB/s is update bytes per second. The last line is one JSON object with
every figure (seconds, GB/s, ratios) for scripts; the table above it is for people. On a
shared 2-core machine figures move by 10-30 % between runs: compare within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from timing import median_seconds

from fedq import strict_json
from fedq.coordinator.intake import Intake, body_digest, check_tensors
from fedq.coordinator.strategies.base import Aggregation, AggregationContext, Aggregator
from fedq.coordinator.strategies.early_mean import WeightedMean
from fedq.coordinator.strategies.median import CoordinateMedian
from fedq.coordinator.strategies.trimmed_mean import TrimmedMean
from fedq.coordinator.verdicts import Admitted, Candidate
from fedq.messages.codec import Weights, decode_message, encode_message, spec_of
from fedq.messages.schema import UpdateMeta
from fedq.runtime.tuning import tune_process

TENSORS = 8
TARGET_RATIO = 2.0
NUM_EXAMPLES = 100


# --------------------------------------------------------------------------------- timing


def median_pair(run: Callable[[], tuple[float, float]], repeat: int) -> tuple[float, float]:
    """Medians of the two durations ``run`` reports itself (after one warm-up run)."""
    run()
    pairs = [run() for _ in range(repeat)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


# --------------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class Update:
    """One participant's update: the encoded body, and its P values as aligned bytes."""

    body: bytes
    payload: bytes


def make_update(index: int, params: int, rng: np.random.Generator) -> Update:
    values = rng.standard_normal(params, dtype=np.float32)
    tensors = {f"t{i}": part for i, part in enumerate(np.array_split(values, TENSORS))}
    meta = UpdateMeta(
        federation="bench",
        participant=f"p{index}",
        round=1,
        base_version=0,
        num_examples=NUM_EXAMPLES,
        metrics={"loss": 0.5},
    )
    return Update(encode_message(meta, tensors), values.tobytes())


def template_of(params: int) -> Weights:
    """The model the deltas are against: only names, shapes and dtypes matter here."""
    sizes = [len(s) for s in np.array_split(np.arange(params), TENSORS)]
    return {f"t{i}": np.zeros(n, dtype=np.float32) for i, n in enumerate(sizes)}


def read_only_values(payload: bytes) -> np.ndarray:
    x = np.frombuffer(payload, dtype=np.float32)
    assert x.flags.aligned and not x.flags.writeable
    return x


def decoded_deltas(body: bytes) -> Weights:
    return decode_message(body).weights()


# ------------------------------------------------------------------------- 1. numpy fold
@dataclasses.dataclass
class Baseline:
    minimal_s: float  # np.multiply(x, w, out=scratch); acc += scratch
    expression_s: float  # acc += w * x


def measure_baseline(payload: bytes, repeat: int) -> Baseline:
    x = read_only_values(payload)
    acc = np.zeros_like(x)
    scratch = np.empty_like(x)
    w = np.float32(NUM_EXAMPLES)

    def minimal() -> None:  # acc += scratch, spelt so that acc stays the outer array
        np.multiply(x, w, out=scratch)
        np.add(acc, scratch, out=acc)

    def expression() -> None:  # acc += w * x
        np.add(acc, w * x, out=acc)

    return Baseline(median_seconds(minimal, repeat), median_seconds(expression, repeat))


def measure_k_folds(payloads: list[bytes], repeat: int) -> float:
    """K minimal numpy folds, each over its own update's values."""
    xs = [read_only_values(p) for p in payloads]
    acc = np.zeros_like(xs[0])
    scratch = np.empty_like(xs[0])
    w = np.float32(NUM_EXAMPLES)

    def folds() -> None:
        for x in xs:
            np.multiply(x, w, out=scratch)
            np.add(acc, scratch, out=acc)

    return median_seconds(folds, repeat)


# --------------------------------------------------------------------- 2. fedq, one update
@dataclasses.dataclass
class OneUpdate:
    decode_schema_s: float
    digest_s: float
    tensor_checks_s: float
    fold_s: float
    parts_sum_s: float
    check_s: float  # Intake.check as one call
    total_s: float  # Intake.check + fold as one call
    aligned_tensor_checks_s: float  # diagnostic: the same checks over aligned copies
    aligned_fold_s: float  # diagnostic: the same fold over aligned copies


class AdmitAll:
    """A version that holds nothing and admits everything (the mode's cheapest yes)."""

    def held_digest(self, update_id: str, chunk: int) -> str | None:
        return None

    def admit(self, meta: UpdateMeta, user: str | None) -> Admitted:
        return Admitted(staleness=0, scale=1.0)


def nothing_seen(update_id: str) -> str | None:
    return None


def measure_one_update(body: bytes, template: Weights, repeat: int) -> OneUpdate:
    spec = spec_of(template)
    intake = Intake("bench", spec, nothing_seen)
    context = AggregationContext(template, 1, 0, Path(tempfile.gettempdir()), version=1)
    aggregation = WeightedMean().start(context)

    def check() -> Candidate:
        verdict = intake.check(body, None, AdmitAll())
        assert isinstance(verdict, Candidate), verdict
        return verdict

    def check_and_fold() -> None:
        verdict = check()
        aggregation.add(verdict.deltas, verdict.meta.num_examples, verdict.admitted.scale)

    def decode_schema() -> None:
        decode_message(body, spec).meta(UpdateMeta)

    tensors = decode_message(body, spec).tensors
    deltas = check().deltas
    aligned = {name: np.frombuffer(d.tobytes(), dtype=d.dtype) for name, d in deltas.items()}
    aligned_tensors = [dataclasses.replace(t, array=aligned[t.name]) for t in tensors]
    parts = {
        "decode_schema_s": median_seconds(decode_schema, repeat),
        "digest_s": median_seconds(lambda: body_digest(body), repeat),
        "tensor_checks_s": median_seconds(lambda: check_tensors(tensors, spec), repeat),
        "fold_s": median_seconds(lambda: aggregation.add(deltas, NUM_EXAMPLES), repeat),
    }
    return OneUpdate(
        **parts,
        parts_sum_s=sum(parts.values()),
        check_s=median_seconds(check, repeat),
        total_s=median_seconds(check_and_fold, repeat),
        aligned_tensor_checks_s=median_seconds(
            lambda: check_tensors(aligned_tensors, spec), repeat
        ),
        aligned_fold_s=median_seconds(lambda: aggregation.add(aligned, NUM_EXAMPLES), repeat),
    )


# ------------------------------------------------------------------------ 3. robust rules
@dataclasses.dataclass
class RobustRun:
    rule: str
    storage: str  # "ram" or "spill"
    add_s: float  # start + K adds
    result_s: float


def time_rule(
    aggregator: Aggregator, context: AggregationContext, deltas: list[Weights]
) -> tuple[float, float]:
    start = time.perf_counter()
    aggregation: Aggregation = aggregator.start(context)
    for delta in deltas:
        aggregation.add(delta, NUM_EXAMPLES)
    added = time.perf_counter()
    aggregation.result()
    done = time.perf_counter()
    aggregation.close()
    return added - start, done - added


def measure_robust(
    template: Weights, deltas: list[Weights], spill_dir: Path, repeat: int
) -> list[RobustRun]:
    k = len(deltas)
    stack_bytes = k * sum(t.nbytes for t in template.values())
    budgets = {"ram": 2 * stack_bytes, "spill": 1}
    rules: dict[str, Aggregator] = {"median": CoordinateMedian(), "trimmed_mean": TrimmedMean(0.1)}
    runs = []
    for rule, aggregator in rules.items():
        for storage, budget in budgets.items():
            context = AggregationContext(template, k, budget, spill_dir, version=1)
            run = functools.partial(time_rule, aggregator, context, deltas)
            add_s, result_s = median_pair(run, repeat)
            runs.append(RobustRun(rule, storage, add_s, result_s))
    return runs


# --------------------------------------------------------------------------------- report
def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:10.2f}"


def print_baseline(b: Baseline, nbytes: int) -> None:
    print(f"\n1. numpy baseline, one update ({nbytes / 1e6:.0f} MB)")
    print(f"{'form':<44} {'ms':>10} {'GB/s':>7}")
    for label, s in (
        ("np.multiply(x, w, out=scratch); acc += scratch", b.minimal_s),
        ("acc += w * x", b.expression_s),
    ):
        print(f"{label:<44} {ms(s)} {gbps(nbytes, s):7.2f}")


def print_one_update(o: OneUpdate, base: float, nbytes: int) -> None:
    print(f"\n2. fedq, one update: Intake.check + WeightedMean.add ({TENSORS} tensors)")
    print(f"{'part':<44} {'ms':>10} {'GB/s':>7} {'x numpy':>8}")
    rows = [
        ("decode + schema", o.decode_schema_s),
        ("body digest (xxh3-128)", o.digest_s),
        ("tensor checks (incl. finite)", o.tensor_checks_s),
        ("fold (WeightedMean.add)", o.fold_s),
        ("sum of the parts", o.parts_sum_s),
        ("Intake.check, measured", o.check_s),
        ("total: check + fold, measured", o.total_s),
        ("diagnostic: tensor checks, aligned copies", o.aligned_tensor_checks_s),
        ("diagnostic: fold, aligned copies", o.aligned_fold_s),
    ]
    for label, s in rows:
        print(f"{label:<44} {ms(s)} {gbps(nbytes, s):7.2f} {s / base:8.2f}")
    verdict = "met" if o.total_s <= TARGET_RATIO * base else "NOT met"
    print(
        f"target: check + fold <= {TARGET_RATIO:g}x numpy -> {o.total_s / base:.2f}x, {verdict} "
        f"(fold alone {o.fold_s / base:.2f}x)"
    )


def print_robust(runs: list[RobustRun], k_folds: float, k: int, nbytes: int) -> None:
    print(f"\n3. robust rules over K={k} updates ({k * nbytes / 1e6:.0f} MB)")
    print(f"K numpy folds: {ms(k_folds).strip()} ms, {gbps(k * nbytes, k_folds):.2f} GB/s")
    print(
        f"{'rule':<13} {'stack':<6} {'add ms':>10} {'x numpy':>8} {'result ms':>10} "
        f"{'x numpy':>8} {'total x':>8}"
    )
    for r in runs:
        print(
            f"{r.rule:<13} {r.storage:<6} {ms(r.add_s)} {r.add_s / k_folds:8.2f} "
            f"{ms(r.result_s)} {r.result_s / k_folds:8.2f} "
            f"{(r.add_s + r.result_s) / k_folds:8.2f}"
        )


def figures(
    args: argparse.Namespace,
    tuned: bool,
    nbytes: int,
    baseline: Baseline,
    one: OneUpdate,
    k_folds: float,
    runs: list[RobustRun],
) -> dict[str, Any]:
    base = baseline.minimal_s
    return {
        "bench": "aggregate",
        "params": args.params,
        "update_bytes": nbytes,
        "updates": args.updates,
        "repeat": args.repeat,
        "malloc_tuning": tuned,
        "loadavg_1min": os.getloadavg()[0],
        "baseline": {
            **dataclasses.asdict(baseline),
            "minimal_gbps": gbps(nbytes, base),
            "expression_gbps": gbps(nbytes, baseline.expression_s),
        },
        "one_update": {
            **dataclasses.asdict(one),
            "total_gbps": gbps(nbytes, one.total_s),
            "fold_ratio": one.fold_s / base,
            "total_ratio": one.total_s / base,
            "target_ratio": TARGET_RATIO,
            "target_met": one.total_s <= TARGET_RATIO * base,
        },
        "robust": {
            "k_numpy_folds_s": k_folds,
            "runs": [
                {
                    **dataclasses.asdict(r),
                    "add_ratio": r.add_s / k_folds,
                    "result_ratio": r.result_s / k_folds,
                    "total_ratio": (r.add_s + r.result_s) / k_folds,
                }
                for r in runs
            ],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000, help="float32 values")
    parser.add_argument("--updates", type=int, default=10, help="K for the robust rules")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tuned = tune_process()  # as the fedq CLI does at start
    print(f"glibc malloc tuning: {'on' if tuned else 'off'} (FEDQ_MALLOC_TUNING=0 turns it off)")
    rng = np.random.default_rng(0)
    updates = [make_update(i, args.params, rng) for i in range(args.updates)]
    template = template_of(args.params)
    nbytes = len(updates[0].payload)
    print(f"P={args.params:,} float32 ({nbytes / 1e6:.0f} MB), K={args.updates}, ", end="")
    print(f"median of {args.repeat}, load average {os.getloadavg()[0]:.2f}")

    baseline = measure_baseline(updates[0].payload, args.repeat)
    print_baseline(baseline, nbytes)
    one = measure_one_update(updates[0].body, template, args.repeat)
    print_one_update(one, baseline.minimal_s, nbytes)

    k_folds = measure_k_folds([u.payload for u in updates], args.repeat)
    deltas = [decoded_deltas(u.body) for u in updates]
    with tempfile.TemporaryDirectory(prefix="fedq-bench-spill-") as spill:
        runs = measure_robust(template, deltas, Path(spill), args.repeat)
    print_robust(runs, k_folds, args.updates, nbytes)
    print(strict_json.dumps(figures(args, tuned, nbytes, baseline, one, k_folds, runs)))


if __name__ == "__main__":
    main()
