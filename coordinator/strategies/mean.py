"""The weighted mean, streaming: O(model) memory however many updates a version takes.

sum_k w_k * s_k * delta_k / sum_k w_k, folded in float32 buffers shaped like the model,
piece by piece through a scratch of BLOCK_VALUES values, and ``add`` keeps nothing of the
update, so its body can go as soon as it returns.

The weights are what senders claim, so the heaviest update is capped at
``max_weight_share`` of the version (:func:`~.base.weight_cap`). Which update is heaviest,
and what the others weigh, is known only when the version closes; so the heaviest so far
is kept aside, unweighted (``s_h * delta_h``), and every other update is folded into the
sums. When a heavier one comes, the one kept aside is folded with its own weight (it can no
longer be the heaviest, and only the heaviest can be over the cap) and the newcomer takes
its place. An update that came in chunks is kept aside as its spool file (a second name of
it: :meth:`~.base.DeltaPieces.keep`) and read again when it is folded, so it costs disk,
not RAM; any other is copied into a second model-sized buffer. At the end the one kept
aside joins with min(w_h, cap(others)). The result is exact whatever the order of arrival:
the cap cannot be gamed by arriving first or last. Memory: the model once plus about
1 MiB of scratch when the heaviest came in chunks, else twice (once with the cap off,
``max_weight_share = 1``). Measured at P = 10M (40 MB), 10 participants and 4 MiB chunks
(``python bench/large_model.py --params 10000000 --participants 10 --rounds 5``): the
coordinator's peak was 227 to 240 MiB with the buffer, 172 to 203 MiB with the spool.

Overflow: finite float32 values times a weight can sum to infinity. Every fold is checked
first (the sum it would write, block by block, without writing), and one that would not be
finite raises :class:`~.base.FoldOverflow` with nothing changed: the update whose fold, at
its own weight, would overflow the sum of those before it is refused (``overflow``). The
end result is a convex combination of finite values, normalised before it is summed, so it
is finite. The check is one more pass over the update through the same scratch (for a
chunked update, one more read of its spool), so it is made only when it could fail: the
update's L2 norm bounds each of its values, so its factor times its norm bounds what its
fold adds to any sum, and the bounds of the folds so far add up to a bound on the sums.
While twice the sums' bound plus the new fold's stays below float32's largest value (the
factor 2 covers the rounding of every addition), no value can overflow, and the update
is folded in one pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fedq.coordinator.strategies.base import (
    BLOCK_VALUES,
    FLOAT32_MAX,
    NO_WEIGHT_CAP,
    Aggregation,
    AggregationContext,
    Delta,
    DeltaPieces,
    FoldOverflow,
    Piece,
    Weights,
    WholeDelta,
    blocks,
    weight_cap,
)


class StreamingMean(Aggregation):
    #: Whether the heaviest update is capped at the context's max_weight_share; off for
    #: subclasses whose result reads the sums of every update (sparse and DP means).
    caps_weight = True

    def __init__(self, context: AggregationContext) -> None:
        super().__init__()
        template = context.template
        self._sums = {name: np.zeros(t.shape, dtype=np.float32) for name, t in template.items()}
        self._scratch = np.empty(BLOCK_VALUES, dtype=np.float32)
        self.total_weight = 0.0
        self._finished = False
        self.share = context.max_weight_share if self.caps_weight else NO_WEIGHT_CAP
        #: The heaviest update so far, read as s_h * delta_h (not in the sums), and its
        #: weight; from its spool, or from ``_aside`` when it could not be kept there.
        self._heaviest: DeltaPieces | None = None
        self._heaviest_weight = 0.0
        self._aside: Weights | None = None
        #: The weight of the updates in the sums.
        self._summed_weight = 0.0
        #: The weight the heaviest update had in the result (after the cap), once taken.
        self.capped_weight: float | None = None
        #: No value of the sums is larger in magnitude: the sum of each fold's reach.
        self._sums_bound = 0.0
        #: The L2 norm of the heaviest as kept aside (s_h * delta_h).
        self._heaviest_norm = 0.0

    def add(self, delta: Delta, weight: float, scale: float = 1.0) -> None:
        self.add_pieces(WholeDelta(delta), weight, scale)

    def add_pieces(self, pieces: DeltaPieces, weight: float, scale: float = 1.0) -> None:
        """Fold ``scale * delta`` with ``weight``, or raise FoldOverflow (nothing written)."""
        assert weight > 0 and 0 < scale <= 1, "weight > 0 and a staleness factor in (0, 1]"
        assert not self._finished, "the result was taken"
        factor = _factor(weight * scale)
        norm = pieces.norm()
        reach = self._check_fits(pieces, factor, norm)
        capped = self.share < NO_WEIGHT_CAP
        if capped and weight > self._heaviest_weight:  # the first, or heavier
            self._set_aside(pieces, weight, scale, norm)
        else:
            self._fold_all(pieces, factor, weight, reach)
        self.total_weight += weight
        self.count += 1

    def _set_aside(self, pieces: DeltaPieces, weight: float, scale: float, norm: float) -> None:
        """``pieces`` becomes the heaviest; the one it replaces is folded with its weight."""
        self._fold_aside()
        kept = pieces.keep()
        if kept is not None:
            self._heaviest = _Scaled(kept, scale)
        else:
            if self._aside is None:
                self._aside = {n: np.empty_like(t) for n, t in self._sums.items()}
            s = np.float32(scale)
            for name, start, values in pieces:
                out = self._aside[name].reshape(-1)[start : start + values.size]
                np.multiply(values, s, out=out, casting="unsafe")
            self._heaviest = WholeDelta(self._aside)
        self._heaviest_weight = weight
        self._heaviest_norm = scale * norm

    def _fold_aside(self) -> None:
        """Fold the update kept aside as the heaviest, if any, with its own weight: a
        heavier one came."""
        previous = self._heaviest
        if previous is not None:
            factor = _factor(self._heaviest_weight)
            reach = self._check_fits(previous, factor, self._heaviest_norm)
            self._fold_all(previous, factor, self._heaviest_weight, reach)
            previous.release()
            self._heaviest = None

    def _all_sums(self) -> list[Weights]:
        """Every buffer whose values add up to the sums (a subclass may keep two)."""
        return [self._sums]

    def _check_fits(self, pieces: DeltaPieces, factor: np.float32, norm: float) -> float:
        """Raise FoldOverflow if ``sums + factor * pieces`` would not be finite; without
        a pass over ``pieces`` when their ``norm`` proves it cannot be. Returns the fold's
        reach, ``factor * norm``: no value it adds to a sum is larger in magnitude."""
        reach = float(factor) * norm
        if 2 * (self._sums_bound + reach) < FLOAT32_MAX:  # False for a NaN or infinite norm
            return reach
        with np.errstate(over="ignore", invalid="ignore"):
            for name, start, values in pieces:
                flats = [sums[name].reshape(-1) for sums in self._all_sums()]
                for offset, block in blocks(values):
                    at = start + offset
                    scratch = self._scratch[: block.size]
                    np.multiply(block, factor, out=scratch, casting="unsafe")
                    for flat in flats:
                        scratch += flat[at : at + block.size]
                    if not np.isfinite(scratch).all():
                        raise FoldOverflow(
                            f"tensor {name!r} times weight {float(factor):.4g} makes the "
                            "float32 sum infinite"
                        )
        return reach

    def _fold_all(
        self, pieces: DeltaPieces, factor: np.float32, weight: float, reach: float
    ) -> None:
        """Fold ``factor * pieces`` into the sums; ``reach`` is what
        :meth:`_check_fits` returned for them."""
        self._fold_parts(pieces, factor, weight)
        self._summed_weight += weight
        self._sums_bound += reach

    def _fold_parts(
        self, pieces: DeltaPieces, factor: np.float32, weight: float, into: Weights | None = None
    ) -> None:
        """Fold ``factor * pieces`` into the sums, half of them in a second thread when they
        come in parts (a chunked update: every other chunk, from its spool). Each value is
        computed as in one thread; only the order in which disjoint values are written
        differs, so the sums are bit for bit the same. A 40 MB update's fold from its
        spool took 0.62x to 0.76x the wall time of one thread's (``python
        bench/chunked_path.py --against REV --pairs 5``, idle machine), and the round of 10
        participant processes 0.86x to 0.98x (``python bench/round_overhead.py --processes
        --participants 10 --params 10000000 --rounds 6 --repeat 1 --against REV --pairs 3``):
        the updates complete together at the end of a round, when the second core is free.
        ``into``: other sums of the same shapes than the aggregation's own."""
        into = self._sums if into is None else into
        parts = pieces.parts(2)
        if len(parts) == 1:
            self._fold_pieces(pieces, factor, weight, self._scratch, into)
            return
        other = _folder().submit(
            self._fold_pieces, parts[1], factor, weight, np.empty_like(self._scratch), into
        )
        try:
            self._fold_pieces(parts[0], factor, weight, self._scratch, into)
        finally:
            other.result()  # never return while the other half still writes

    def _fold_pieces(
        self,
        pieces: DeltaPieces,
        factor: np.float32,
        weight: float,
        scratch: np.ndarray,
        into: Weights,
    ) -> None:
        for name, start, values in pieces:
            for offset, block in blocks(values):
                self._fold(name, start + offset, block, factor, weight, scratch, into)

    def _fold(
        self,
        name: str,
        at: int,
        block: np.ndarray,
        factor: np.float32,
        weight: float,
        scratch: np.ndarray,
        into: Weights,
    ) -> None:
        """Add ``factor * block`` to ``into`` (the sums) of tensor ``name`` from flat index
        ``at`` (through ``scratch``, the calling thread's)."""
        total = into[name].reshape(-1)[at : at + block.size]
        part = scratch[: block.size]
        np.multiply(block, factor, out=part, casting="unsafe")
        total += part

    def result(self) -> Weights:
        """The mean, made in place in the sums (no second model-sized buffer) and handed
        over: the caller may overwrite it. Adding after it is an error."""
        assert self.count > 0, "mean of no updates"
        if not self._finished:
            self._finished = True
            if self._heaviest is None:
                self._normalise()
            else:
                self._join_heaviest(self._heaviest)
        return self._sums

    def close(self) -> None:
        """Let go of the heaviest update kept aside (its spool file's second name)."""
        if self._heaviest is not None:
            self._heaviest.release()
            self._heaviest = None
        self._aside = None

    def _normalise(self) -> None:
        inverse = np.float32(1.0 / self.total_weight)
        for total in self._sums.values():
            total *= inverse

    def _join_heaviest(self, heaviest: DeltaPieces) -> None:
        """sums / W + delta_h * (w_h' / W), W = the others' weight + w_h' and w_h' the
        heaviest's capped weight: each part is normalised first, so the sum of a convex
        combination of finite values stays finite."""
        others = self._summed_weight
        capped = min(self._heaviest_weight, weight_cap(others, self.share))
        self.capped_weight = capped
        total = others + capped
        inverse, part = np.float32(1.0 / total), np.float32(capped / total)
        for summed in self._sums.values():
            summed *= inverse
        self._fold_parts(heaviest, part, capped)
        self.close()


class _Scaled(DeltaPieces):
    """``scale * pieces`` in float32, a block at a time: the heaviest update kept aside
    as it would have been copied (the same rounding as the copy in memory)."""

    def __init__(self, pieces: DeltaPieces, scale: float) -> None:
        super().__init__(pieces.spec)
        self.pieces = pieces
        self.scale = np.float32(scale)
        self._scratch = np.empty(BLOCK_VALUES, dtype=np.float32)

    def __iter__(self) -> Iterator[Piece]:
        for name, start, values in self.pieces:
            for offset, block in blocks(values):
                scratch = self._scratch[: block.size]
                np.multiply(block, self.scale, out=scratch, casting="unsafe")
                yield name, start + offset, scratch

    def norm(self) -> float:
        return float(self.scale) * self.pieces.norm()

    def parts(self, n: int) -> list[DeltaPieces]:
        inner = self.pieces.parts(n)
        return [self] if len(inner) == 1 else [_Scaled(part, float(self.scale)) for part in inner]

    def release(self) -> None:
        self.pieces.release()


_FOLDER: ThreadPoolExecutor | None = None


def _folder() -> ThreadPoolExecutor:
    """The thread that folds the second half of a chunked update: one per process (a
    version folds one update at a time; another aggregation folding at once waits its
    turn)."""
    global _FOLDER
    if _FOLDER is None:
        _FOLDER = ThreadPoolExecutor(1, thread_name_prefix="fedq-fold")
    return _FOLDER


def _factor(weight: float) -> np.float32:
    """``weight`` as the float32 factor of a fold, or FoldOverflow when it is not one."""
    if not weight <= FLOAT32_MAX:
        raise FoldOverflow(f"weight {weight:.4g} is beyond float32")
    return np.float32(weight)
