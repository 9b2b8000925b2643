"""The coordinator's CPU on a chunked update, single-threaded, no broker: what its worker
threads do for each update that comes as chunks (the default above 4 MiB of tensors).

    python bench/chunked_path.py [--params 10000000] [--against REV --pairs 3]

- intake: per chunk, :meth:`~fedq.coordinator.intake.Intake.check` (decode, every check,
  the sum of squares, the chunk's digest) and the assembler's spool write;
- fold: the assembler's check of the whole (coverage, digest, norm), then the fold of the
  update read back from its spool into the weighted mean.

Milliseconds per update, the median of ``--repeat`` updates. With ``--against REV``, the
same measurement runs with commit REV's fedq (installed apart, ``other_commit.py``) in
alternating turns with this checkout's, each turn a process of its own, and the report
gives this checkout's time over REV's per pair. ``round_overhead.py`` reports both figures
among its CPU parts. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from aggregate import AdmitAll, nothing_seen
from other_commit import installed_commit

from fedq import strict_json
from fedq.coordinator.assembly import Assembled, Assembler
from fedq.coordinator.intake import Intake
from fedq.coordinator.strategies import AggregationContext
from fedq.coordinator.strategies.early_mean import WeightedMean
from fedq.coordinator.verdicts import ChunkCandidate
from fedq.messages.chunks import DEFAULT_CHUNK_BYTES, encode_chunks
from fedq.messages.codec import Weights, spec_of
from fedq.messages.schema import UpdateMeta
from fedq.messages.transport import Delivery


class _Body:
    """What the assembler reads of a delivery."""

    def __init__(self, body: bytes) -> None:
        self.body = body


@dataclass(frozen=True)
class ChunkedPath:
    """Seconds per update, each the median of the runs."""

    intake: float
    fold: float


def chunked_path_seconds(
    template: Weights, delta: Weights, meta: UpdateMeta, repeat: int
) -> ChunkedPath | None:
    """The intake and fold seconds of ``delta`` sent as chunks, or None when it fits one
    message at the default chunk size."""
    bodies = list(encode_chunks(meta, delta))
    if len(bodies) == 1:
        return None
    spec = spec_of(template)
    intake = Intake(meta.federation, spec, nothing_seen)
    intakes, folds = [], []
    with tempfile.TemporaryDirectory(prefix="fedq-bench-chunked-") as folder:
        assembler = Assembler(  # one for every update, as a coordinator has
            Path(folder) / "spool",
            spec,
            max_bytes=1 << 40,
            max_norm=None,
            max_streams=1,
            timeout_seconds=60.0,
            chunk_bytes=DEFAULT_CHUNK_BYTES,
            max_per_participant=1,
        )
        for _ in range(repeat):
            mean = WeightedMean().start(AggregationContext(template, 1, 0, Path(folder), 1))
            start = time.perf_counter()
            for body in bodies:
                verdict = intake.check(body, None, AdmitAll())
                assert isinstance(verdict, ChunkCandidate), verdict
                outcome = assembler.add(verdict, cast(Delivery, _Body(body)))
            taken = time.perf_counter()
            assert isinstance(outcome, Assembled)
            mean.add_pieces(assembler.finish(outcome.stream), float(meta.num_examples))
            outcome.stream.close()
            intakes.append(taken - start)
            folds.append(time.perf_counter() - taken)
    return ChunkedPath(statistics.median(intakes), statistics.median(folds))


def measure(params: int, repeat: int) -> ChunkedPath:
    """The path of a synthetic update of ``params`` float32 values (one tensor)."""
    # Not fedq.runtime.tuning.tune_process: with --against, this may be an older fedq.
    from fedq.runtime.allocator import tune_malloc_for_large_buffers
    from fedq.runtime.blas_threads import limit_blas_threads

    tune_malloc_for_large_buffers()
    limit_blas_threads()
    template = {"w": np.zeros(params, dtype=np.float32)}
    values = np.random.default_rng(0).standard_normal(params).astype(np.float32)
    meta = UpdateMeta(federation="bench", participant="p0", round=1, base_version=0,
                      num_examples=100)  # fmt: skip
    path = chunked_path_seconds(template, {"w": values * np.float32(0.01)}, meta, repeat)
    if path is None:
        raise SystemExit(f"--params {params}: the update fits one message, no chunks")
    return path


def turn(params: int, repeat: int, env: dict[str, str]) -> ChunkedPath:
    """One measurement in a process of its own (``env`` picks the fedq it imports)."""
    done = subprocess.run(
        [sys.executable, __file__, "--params", str(params), "--repeat", str(repeat), "--one"],
        env=os.environ | env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return ChunkedPath(**json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=9, help="updates per measurement")
    parser.add_argument("--against", metavar="REV", help="also measure commit REV, alternating")
    parser.add_argument("--pairs", type=int, default=3, help="pairs with --against")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a turn: the figures alone
        print(json.dumps(dataclasses.asdict(measure(args.params, args.repeat))))
        return
    figures: dict[str, object] = {"bench": "chunked_path", "params": args.params}
    if args.against is None:
        path = turn(args.params, args.repeat, {})
        print(f"{args.params:,} float32 values as chunks, per update:")
        print(f"  intake + spool of every chunk  {path.intake * 1e3:7.1f} ms")
        print(f"  whole checked, read back, fold {path.fold * 1e3:7.1f} ms")
        figures |= dataclasses.asdict(path)
    else:
        with installed_commit(args.against) as other:
            pairs = []
            for index in range(args.pairs):
                sides = [("this", {}), ("other", other.env)]
                measured = dict(
                    (side, turn(args.params, args.repeat, env))
                    for side, env in (sides if index % 2 == 0 else sides[::-1])
                )
                this, that = measured["this"], measured["other"]
                pairs.append({"this": dataclasses.asdict(this), "other": dataclasses.asdict(that)})
                print(
                    f"pair {index + 1}: intake {this.intake * 1e3:.1f} ms against "
                    f"{that.intake * 1e3:.1f} ({this.intake / that.intake:.2f}x), fold "
                    f"{this.fold * 1e3:.1f} ms against {that.fold * 1e3:.1f} "
                    f"({this.fold / that.fold:.2f}x)"
                )
            figures |= {"against": other.sha, "pairs": pairs}
    print(strict_json.dumps(figures))


if __name__ == "__main__":
    main()
