"""A version's deltas held as rows of one (K, P) float32 matrix, in RAM or spilled to disk.

The robust rules (median, trimmed mean, Krum) need every delta of a version at once. Row k
is update k's ``scale * delta`` with the template's tensors concatenated in template order
(P values), and ``weights[k]`` its example count. The matrix lives in RAM while
K * P * 4 bytes fit the memory budget, beyond it in a memory-mapped file under the spill
directory.

What must stay true:
- ``add`` copies: nothing of the caller's (read-only, short-lived) arrays is kept.
- The helpers read the matrix in column blocks of about :attr:`DeltaStack.block_bytes`, so
  a spilled stack is never loaded whole; RAM and spilled stacks give bit-identical results.
- The spill file is deleted by :meth:`DeltaStack.close` (idempotent) or, failing that, when
  the stack is garbage collected.
"""

from __future__ import annotations

import abc
import os
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from fedq.coordinator.strategies.base import (
    Aggregation,
    AggregationContext,
    Delta,
    DeltaPieces,
    Weights,
    WholeDelta,
)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


class DeltaStack:
    #: Bytes of float32 matrix a helper reads at once (per column block, all rows).
    block_bytes: int = 64 << 20

    def __init__(self, context: AggregationContext) -> None:
        assert context.capacity >= 1, "a stack holds at least one update"
        self._layout: list[tuple[str, tuple[int, ...], int, int]] = []
        self._offsets: dict[str, int] = {}
        start = 0
        for name, tensor in context.template.items():
            self._layout.append((name, tensor.shape, start, start + tensor.size))
            self._offsets[name] = start
            start += tensor.size
        self.size = start
        self.capacity = context.capacity
        self.count = 0
        self._weights = np.zeros(context.capacity, dtype=np.float64)
        shape = (context.capacity, self.size)
        self.spill_path: Path | None = None
        if context.capacity * self.size * 4 <= context.memory_budget:
            self._matrix: np.ndarray = np.empty(shape, dtype=np.float32)
            return
        context.spill_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="deltas-", suffix=".f32", dir=context.spill_dir)
        os.close(fd)
        self.spill_path = Path(name)
        self._cleanup = weakref.finalize(self, _remove, self.spill_path)
        try:
            self._matrix = np.memmap(self.spill_path, dtype=np.float32, mode="w+", shape=shape)
        except BaseException:
            self._cleanup()
            raise

    @property
    def weights(self) -> np.ndarray:
        """The example counts of the rows added so far (float64)."""
        return self._weights[: self.count]

    def add(self, delta: Delta | DeltaPieces, weight: float, scale: float = 1.0) -> None:
        """Row ``count`` becomes ``scale * delta``, written piece by piece."""
        assert self.count < self.capacity, f"more than the capacity of {self.capacity} updates"
        pieces = delta if isinstance(delta, DeltaPieces) else WholeDelta(delta)
        row = self._matrix[self.count]
        factor = np.float32(scale)
        for name, start, values in pieces:
            at = self._offsets[name] + start
            np.multiply(values, factor, out=row[at : at + values.size], casting="unsafe")
        self._weights[self.count] = weight
        self.count += 1

    def column_blocks(self) -> Iterator[tuple[slice, np.ndarray]]:
        """(columns, the (count, columns) slab) in order, each about ``block_bytes``."""
        assert self.count > 0, "no updates"
        width = max(1, self.block_bytes // (self.count * 4))
        for start in range(0, self.size, width):
            columns = slice(start, min(start + width, self.size))
            yield columns, np.asarray(self._matrix[: self.count, columns])

    def reduce_columns(self, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The flat float32 vector of ``fn(slab)``: fn maps (rows, b) values to b values."""
        flat = np.empty(self.size, dtype=np.float32)
        for columns, slab in self.column_blocks():
            flat[columns] = fn(slab)
        return flat

    def gram(self) -> np.ndarray:
        """The (count, count) float64 matrix of the rows' pairwise dot products."""
        gram = np.zeros((self.count, self.count), dtype=np.float64)
        for _, slab in self.column_blocks():
            rows = slab.astype(np.float64)
            gram += rows @ rows.T
        return gram

    def weighted_rows_mean(self, indices: Sequence[int], weights: Sequence[float]) -> np.ndarray:
        """sum_i weights_i * row_{indices_i} / sum_i weights_i, flat float32."""
        picked = np.asarray(indices, dtype=np.intp)
        w = np.asarray(weights, dtype=np.float64)
        total = w.sum()
        assert picked.size == w.size and total > 0, "one positive weight per row"
        return self.reduce_columns(lambda slab: (w @ slab[picked]) / total)

    def unflatten(self, flat: np.ndarray) -> Weights:
        """A flat vector of P values back to the template's names and shapes, float32."""
        assert flat.shape == (self.size,), f"{flat.shape} is not ({self.size},)"
        values = np.asarray(flat, dtype=np.float32)
        return {
            name: values[start:stop].reshape(shape) for name, shape, start, stop in self._layout
        }

    def close(self) -> None:
        """Drop the matrix and delete the spill file. Safe to call twice."""
        self._matrix = np.empty((0, self.size), dtype=np.float32)
        self.count = 0
        if self.spill_path is not None:
            self._cleanup()


class StackedAggregation(Aggregation):
    """An aggregation that keeps every delta in a :class:`DeltaStack` and combines them in
    :meth:`combine` when the version closes."""

    def __init__(self, context: AggregationContext) -> None:
        super().__init__()
        self.stack = DeltaStack(context)
        #: For the rules that weight rows by example count (:func:`~.base.capped_weights`).
        self.max_weight_share = context.max_weight_share

    def add(self, delta: Delta, weight: float, scale: float = 1.0) -> None:
        self.add_pieces(WholeDelta(delta), weight, scale)

    def add_pieces(self, pieces: DeltaPieces, weight: float, scale: float = 1.0) -> None:
        assert weight > 0 and 0 < scale <= 1, "weight > 0 and a staleness factor in (0, 1]"
        self.stack.add(pieces, weight, scale)
        self.count += 1

    @abc.abstractmethod
    def combine(self, stack: DeltaStack) -> np.ndarray:
        """The aggregated delta as a flat float32 vector of the stack's P values."""

    def result(self) -> Weights:
        assert self.count > 0, "aggregate of no updates"
        return self.stack.unflatten(self.combine(self.stack))

    def close(self) -> None:
        self.stack.close()
