"""The weighted mean that folds a chunked update's chunks as they come.

Why. A 40 MB update comes as 10 chunks of 4 MiB, interleaved with the other
participants' chunks, so the updates of a round all complete near its end. Folded only
once whole (:class:`~.mean.StreamingMean`, reading each back from its spool), their folds
run one after another when the last chunks are in, on the round's critical path, while the
coordinator waited between chunks before. Folded as they come, that work is done while
the chunks arrive, and the update is not read back from its spool.

How it stays exact. A chunk is folded before its update is whole and checked (every value
once, the digest of the whole, the norm bound, the model's headroom), and a float sum
cannot be undone: subtracting the values again loses what their addition rounded away,
and a chunk of values near 1e30 would wipe out every other update's share of the sums.
So the chunked updates of a version go into sums of their own, which can be *folded
again*: each update admitted into them can be read again (its spool file, kept under a
second name until the version closes). Taking one out (:meth:`EarlyStreamingMean.drop`:
a refusal, a stream that stopped, a stream still coming when the version closes) is
folding the others again from zero, once, at the end. Updates that came in one message go
into StreamingMean's own sums, which are never undone. At the end the two are one: the
refoldable sums become the sums when nothing else was folded (no second model-sized
buffer in a version of chunked updates), else are added to them.

The weight cap. A chunked update is folded with its own weight, the heaviest too. At the
end, if the heaviest is chunked and over its cap (:func:`~.base.weight_cap`), it is taken
out (the others folded again) and joined with its capped weight, as StreamingMean joins
the one it keeps aside; with an honest spread of weights (within share / (1 - share) of
the others together) the cap does not bind and nothing is folded again.

What folding again costs, and who can cause it: one read and fold of every chunked
update of the version, about what StreamingMean spends anyway to fold them once, at the
version's end. However many updates are dropped in a version, the sums are folded again
once, before the result (until then they count the dropped updates' reach in their bound),
and once one is dropped no update begins early in that version (its folds would be
repeated). So a sender whose streams are refused costs the coordinator at most one more
pass over the version's updates, whatever it sends.

Memory: the refoldable sums (one model) and, in a version with updates in one message
too, StreamingMean's sums; disk: every chunked update of the version until it closes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedq.coordinator.strategies.base import (
    FLOAT32_MAX,
    NO_WEIGHT_CAP,
    AggregationContext,
    Aggregator,
    DeltaPieces,
    EarlyFolds,
    FoldOverflow,
    Weights,
    weight_cap,
)
from fedq.coordinator.strategies.mean import StreamingMean, _factor, _Scaled


@dataclass
class _Refoldable:
    """One update's part of the refoldable sums: what it takes to fold it again."""

    factor: np.float32
    weight: float
    scale: float
    #: How many of its chunks were folded as they came (in assembly).
    chunks: int = 0
    sum_squares: float = 0.0
    #: Once admitted: the whole update, readable until released.
    whole: DeltaPieces | None = None

    @property
    def reach(self) -> float:
        """No value its folds add to a sum is larger in magnitude."""
        return float(self.factor) * math.sqrt(self.sum_squares)


class EarlyStreamingMean(StreamingMean, EarlyFolds):
    def __init__(self, context: AggregationContext) -> None:
        super().__init__(context)
        self._template = context.template
        self._early = False
        #: The sums of the chunked updates (made at their first fold), and what is in them.
        self._refoldable: Weights | None = None
        self._refolds: dict[str, _Refoldable] = {}
        #: The heaviest update, when it is one of the refoldable ones.
        self._heaviest_key: str | None = None
        #: Whether StreamingMean's own sums were written (else the refoldable ones become
        #: the result without an addition).
        self._sums_written = False
        #: Whether the refoldable sums hold folds of an update dropped since: they are
        #: folded again from zero before the result.
        self._stale = False
        #: How many times the refoldable sums were folded again from zero.
        self.folded_again = 0

    def early_folds(self) -> EarlyStreamingMean:
        self._early = True
        return self

    # ------------------------------------------------------------ EarlyFolds
    def begin(self, key: str, weight: float, scale: float) -> bool:
        """No once an update was dropped: the sums will be folded again at the end, and
        whatever is folded early from then on would be folded twice."""
        if not self._early or self._finished or self._stale or key in self._refolds:
            return False
        try:
            factor = _factor(weight * scale)
        except (FoldOverflow, OverflowError):  # taken whole, and refused, when admitted
            return False
        self._refolds[key] = _Refoldable(factor, weight, scale)
        return True

    def fold(self, key: str, chunk: DeltaPieces, sum_squares: float) -> bool:
        entry = self._refolds.get(key)
        if entry is None or entry.whole is not None or self._finished:
            return False
        before = entry.reach
        after = float(entry.factor) * math.sqrt(entry.sum_squares + sum_squares)
        if not 2 * (self._sums_bound - before + after) < FLOAT32_MAX:
            self.drop(key)  # its whole will go through the exact check, from its spool
            return False
        self._fold_parts(chunk, entry.factor, entry.weight, self._refoldable_sums())
        entry.chunks += 1
        entry.sum_squares += sum_squares
        self._sums_bound += after - before
        return True

    def drop(self, key: str) -> None:
        """Out of the updates to fold again; the sums are folded again once, at the end
        (however many are dropped, one pass), and keep counting its reach until then."""
        entry = self._refolds.pop(key, None)
        if entry is None:
            return
        if entry.whole is not None:
            entry.whole.release()
        if entry.chunks or entry.whole is not None:
            self._stale = True

    def admit(
        self, key: str, pieces: DeltaPieces, weight: float, scale: float, chunks: int
    ) -> bool:
        """As :meth:`EarlyFolds.admit`. An update begun early whose folds miss one of its
        ``chunks`` (or begun on other terms) is taken out and folded whole: never taken
        as it is."""
        assert weight > 0 and 0 < scale <= 1, "weight > 0 and a staleness factor in (0, 1]"
        assert not self._finished, "the result was taken"
        entry = self._refolds.get(key)
        if entry is not None and (
            entry.whole is not None
            or (entry.weight, entry.scale) != (weight, scale)
            or entry.chunks != chunks
        ):
            self.drop(key)
            entry = None
        kept = pieces.keep()
        if kept is None:  # in memory: StreamingMean's own sums
            if entry is not None:
                self.drop(key)
            return False
        heaviest = self.share < NO_WEIGHT_CAP and weight > self._heaviest_weight
        try:  # FoldOverflow: nothing more written; the caller refuses it (and drops it)
            if entry is None:
                factor, norm = _factor(weight * scale), pieces.norm()
                reach = self._check_fits(pieces, factor, norm)
                if heaviest:
                    self._fold_aside()
                self._fold_parts(pieces, factor, weight, self._refoldable_sums())
                entry = _Refoldable(factor, weight, scale, chunks, norm**2)
                self._refolds[key] = entry
                self._sums_bound += reach
            elif heaviest:
                self._fold_aside()
        except FoldOverflow:
            kept.release()
            raise
        entry.whole = kept
        if heaviest:
            self._heaviest_key, self._heaviest_weight = key, weight
        self._summed_weight += weight
        self.total_weight += weight
        self.count += 1
        return True

    # ------------------------------------------------------------- internals
    def _refoldable_sums(self) -> Weights:
        if self._refoldable is None:
            self._refoldable = {
                name: np.zeros(t.shape, dtype=np.float32) for name, t in self._template.items()
            }
        return self._refoldable

    def _all_sums(self) -> list[Weights]:
        return [self._sums] if self._refoldable is None else [self._sums, self._refoldable]

    def _fold_all(
        self, pieces: DeltaPieces, factor: np.float32, weight: float, reach: float
    ) -> None:
        self._sums_written = True
        super()._fold_all(pieces, factor, weight, reach)

    def _set_aside(self, pieces: DeltaPieces, weight: float, scale: float, norm: float) -> None:
        self._heaviest_key = None  # an update in memory is heavier: it is kept aside
        super()._set_aside(pieces, weight, scale, norm)

    def _fold_again(self) -> None:
        """The refoldable sums made again from zero of the updates still in them."""
        sums = self._refoldable
        if sums is None:
            return
        for total in sums.values():
            total.fill(0)
        for entry in self._refolds.values():
            assert entry.whole is not None, "updates still coming were dropped first"
            self._fold_parts(entry.whole, entry.factor, entry.weight, sums)
        self._stale = False
        self.folded_again += 1

    def result(self) -> Weights:
        if not self._finished:
            self._settle_refoldable()
        return super().result()

    def _settle_refoldable(self) -> None:
        """Before the result: out with the updates still coming, out with a chunked
        heaviest over its cap (kept aside to be joined as StreamingMean joins it), then
        one set of sums."""
        for coming in [key for key, entry in self._refolds.items() if entry.whole is None]:
            self.drop(coming)
        key = self._heaviest_key
        if key is not None:
            entry = self._refolds[key]
            others = self._summed_weight - entry.weight
            if weight_cap(others, self.share) < entry.weight:
                del self._refolds[key]
                self._summed_weight = others
                assert entry.whole is not None, "the heaviest was admitted"
                self._heaviest = _Scaled(entry.whole, entry.scale)
                self._heaviest_norm = entry.scale * math.sqrt(entry.sum_squares)
                self._stale = True
            else:
                self.capped_weight = entry.weight
            self._heaviest_key = None
        if self._stale:
            self._fold_again()
        self._merge()

    def _merge(self) -> None:
        """The refoldable sums into StreamingMean's (or in their place)."""
        sums, self._refoldable = self._refoldable, None
        if sums is None:
            return
        if not self._sums_written:
            self._sums = sums
            return
        for name, total in sums.items():
            self._sums[name] += total

    def close(self) -> None:
        """Let go of the spool files kept (and what StreamingMean keeps)."""
        for entry in self._refolds.values():
            if entry.whole is not None:
                entry.whole.release()
        self._refolds = {}
        self._refoldable = None
        super().close()


class WeightedMean(Aggregator):
    """FedAvg's aggregation: the example-weighted mean of the deltas, the heaviest capped
    at ``max_weight_share`` of the version; a version may fold chunks as they come."""

    name = "mean"

    def start(self, context: AggregationContext) -> EarlyStreamingMean:
        return EarlyStreamingMean(context)
