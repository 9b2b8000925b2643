"""The coordinator's CPU on a chunked update, single-threaded, no broker: what its worker
threads do for each update that comes as chunks (the default above 4 MiB of tensors).

- intake: per chunk, :meth:`~fedq.coordinator.intake.Intake.check` (decode, every check,
  the sum of squares, the chunk's digest) and the assembler's spool write;
- fold: the assembler's check of the whole (coverage, digest, norm), then the fold of the
  update read back from its spool into the weighted mean.

``round_overhead.py`` reports both among its CPU parts.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from fedq.coordinator.assembly import Assembled, Assembler
from fedq.coordinator.intake import Intake
from fedq.coordinator.strategies import AggregationContext
from fedq.coordinator.strategies.mean import WeightedMean
from fedq.coordinator.verdicts import Admitted, ChunkCandidate
from fedq.messages.chunks import DEFAULT_CHUNK_BYTES, encode_chunks
from fedq.messages.codec import Weights, spec_of
from fedq.messages.schema import UpdateMeta
from fedq.messages.transport import Delivery


class _Open:
    """An open version that admits everything and holds nothing."""

    def held_digest(self, update_id: str) -> str | None:
        return None

    def admit(self, meta: UpdateMeta, user: str | None) -> Admitted:
        return Admitted(0, 1.0)


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
    intake = Intake(meta.federation, spec, lambda _: None)
    intakes, folds = [], []
    with tempfile.TemporaryDirectory(prefix="fedq-bench-chunked-") as folder:
        for _ in range(repeat):
            assembler = Assembler(
                Path(folder) / "spool",
                spec,
                max_bytes=1 << 40,
                max_norm=None,
                max_streams=1,
                timeout_seconds=60.0,
                chunk_bytes=DEFAULT_CHUNK_BYTES,
                max_per_participant=1,
            )
            mean = WeightedMean().start(AggregationContext(template, 1, 0, Path(folder), 1))
            start = time.perf_counter()
            for body in bodies:
                verdict = intake.check(body, None, _Open())
                assert isinstance(verdict, ChunkCandidate), verdict
                outcome = assembler.add(verdict, cast(Delivery, _Body(body)))
            taken = time.perf_counter()
            assert isinstance(outcome, Assembled)
            mean.add_pieces(assembler.finish(outcome.stream), float(meta.num_examples))
            outcome.stream.close()
            intakes.append(taken - start)
            folds.append(time.perf_counter() - taken)
    return ChunkedPath(statistics.median(intakes), statistics.median(folds))
