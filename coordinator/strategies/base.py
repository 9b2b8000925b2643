"""What every strategy part is: small, pure numpy, with explicit state.

A version's aggregated delta is made in three steps, each a part chosen per federation:

1. an :class:`Aggregator` starts one :class:`Aggregation` per version and is given each
   accepted update as ``add_pieces(pieces, weight, scale)`` (:class:`DeltaPieces`: the
   delta read slice by slice, so a chunked 500 MB update is never whole in memory; an
   aggregation that does not stream gets it whole through ``add(delta, weight, scale)``):
   ``weight`` is the update's example count (FedAvg's w_k before normalisation) and
   ``scale`` its staleness factor s(tau) in (0, 1]. The update contributes
   ``scale * delta``; the normaliser uses ``weight`` only, so an all-fresh version is
   plain FedAvg and stale updates shrink the step (FedBuff).

   ``weight`` is what the sender claims (``num_examples``): nothing checks it. So the
   rules that weight by it (``mean``, ``clipped_mean``, multi-Krum) cap the heaviest
   update of a version at :func:`weight_cap`: at most ``max_weight_share`` of the
   version's total weight (``share / (1 - share)`` times the weight of all the others
   together). The share is in [0.5, 1], so only the heaviest can ever be over it, and the
   cap is exact in a streaming fold: the heaviest is kept aside until the version closes,
   when the others' weight is known (see :mod:`.mean`). A version of one update is that
   update (there are no others to share with).
2. ``Aggregation.result()`` is the aggregated delta, float32, shaped like the model.
3. a :class:`ServerOptimizer` turns (model v, aggregated delta) into model v + 1 and keeps
   its state (momentum, moments) in :meth:`ServerOptimizer.state`, which the coordinator
   saves in the checkpoint of every version, so a restarted coordinator continues exactly.

What must stay true:
- ``add`` receives read-only views over a message body that is released when it returns:
  an aggregation copies what it keeps, and nothing else of the update survives the call.
- Streaming aggregations (``holds_updates = False``) use O(model) memory however many
  updates are added; the others hold K x P values, in RAM up to a budget, beyond it in a
  file under the state directory (:class:`~fedq.coordinator.strategies.stack.DeltaStack`).
- No I/O but that spill file, no broker, no clock: the same inputs give the same model.
- A streaming sum never holds a value that is not finite: a fold that would overflow
  float32 raises :class:`FoldOverflow` before it writes anything, so the update that
  would break the sum is refused and the others stand as they were.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Weights = dict[str, np.ndarray]
Delta = Mapping[str, np.ndarray]
State = dict[str, np.ndarray]


#: Values a streaming fold or a norm converts at once: bounded scratch, whatever the model,
#: and small enough to stay in a core's cache (256 KiB of float32, 512 KiB of float64), so
#: a pass over a block reads what the previous pass just wrote instead of going to RAM
#: again. Against 1 MiB-value blocks (commit e1ae75a), the intake of a 40 MB chunked
#: update took 0.85x the CPU and its fold 0.94x, medians of 5 alternating pairs
#: (``python bench/chunked_path.py --against e1ae75a --pairs 5``).
BLOCK_VALUES = 1 << 16

#: A piece of a delta: tensor name, flat start, flat values (read-only, valid until the
#: next piece is read).
Piece = tuple[str, int, np.ndarray]


def blocks(values: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, up to BLOCK_VALUES values) of a flat array, in order."""
    for start in range(0, values.size, BLOCK_VALUES):
        yield start, values[start : start + BLOCK_VALUES]


def sum_of_squares(values: np.ndarray) -> float:
    """The sum of the squared values, accumulated in float64 a block at a time (float32's
    own sum would overflow for values above about 1.8e19, which are finite). NaN or
    infinity among the values makes it non-finite."""
    flat = values.reshape(-1)
    scratch = np.empty(min(BLOCK_VALUES, flat.size), dtype=np.float64)
    total = 0.0
    for _, block in blocks(flat):
        part = scratch[: block.size]
        np.copyto(part, block, casting="unsafe")
        total += float(np.dot(part, part))
    return total


def l2_norm(delta: Delta) -> float:
    """The L2 norm over every value of every tensor, accumulated in float64."""
    return math.sqrt(sum(sum_of_squares(tensor) for tensor in delta.values()))


class DeltaPieces(abc.ABC):
    """One update's delta read piece by piece: every value of every tensor exactly once.

    ``spec`` gives each tensor's shape and dtype in model order. Pieces may come in any
    order and any size, and may be read more than once (``iter`` again)."""

    def __init__(self, spec: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> None:
        self.spec = spec

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Piece]: ...

    @abc.abstractmethod
    def norm(self) -> float:
        """The L2 norm of the whole delta."""

    def keep(self) -> DeltaPieces | None:
        """These pieces, still readable after the caller lets them go, without a copy in
        memory (a spooled update keeps its spool file); None when only a copy in memory
        could keep them. What it returns is the caller's to :meth:`release`."""
        return None

    def release(self) -> None:  # noqa: B027 - optional hook
        """Let go of what :meth:`keep` kept. Safe to call twice."""

    def parts(self, n: int) -> list[DeltaPieces]:
        """Up to ``n`` groups of these pieces, disjoint and together the whole, for folding
        in parallel (each into other values of the sums); this default is one group."""
        return [self]

    def materialize(self) -> Weights:
        """The delta as whole tensors: O(model) memory, for aggregations that need it."""
        out = {name: np.empty(shape, dtype) for name, (shape, dtype) in self.spec.items()}
        for name, start, values in self:
            out[name].reshape(-1)[start : start + values.size] = values
        return out


class WholeDelta(DeltaPieces):
    """A delta whose tensors are all in memory (an update that came in one message)."""

    def __init__(self, delta: Delta, norm: float | None = None) -> None:
        """``norm``: the delta's L2 norm if already known (the intake's, from its one pass
        over the values), else computed when first asked for."""
        super().__init__({name: (t.shape, t.dtype) for name, t in delta.items()})
        self.delta = delta
        self._norm = norm

    def __iter__(self) -> Iterator[Piece]:
        for name, tensor in self.delta.items():
            yield name, 0, tensor.reshape(-1)

    def norm(self) -> float:
        if self._norm is None:
            self._norm = l2_norm(self.delta)
        return self._norm

    def materialize(self) -> Weights:
        return dict(self.delta)


#: The largest share of a version's weight one update may have: no cap.
NO_WEIGHT_CAP = 1.0

#: The largest finite float32: a factor above it cannot be folded.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def weight_cap(others: float, share: float) -> float:
    """The most the heaviest update of a version may weigh when all the others together
    weigh ``others``: ``share`` of the total, i.e. ``share / (1 - share) * others``.
    Infinite (no cap) for ``share >= 1`` or when it is alone (``others == 0``)."""
    assert share >= 0.5, "below one half, more than the heaviest could be over its share"
    if share >= NO_WEIGHT_CAP or others <= 0:
        return math.inf
    return share / (1.0 - share) * others


def capped_weights(weights: Sequence[float], share: float) -> list[float]:
    """``weights`` with the heaviest lowered to :func:`weight_cap` of the others."""
    capped = [float(w) for w in weights]
    if len(capped) < 2:
        return capped
    heaviest = max(range(len(capped)), key=capped.__getitem__)
    others = math.fsum(capped[:heaviest] + capped[heaviest + 1 :])
    capped[heaviest] = min(capped[heaviest], weight_cap(others, share))
    return capped


class FoldOverflow(ArithmeticError):
    """Folding an update would make a float32 sum infinite: finite values whose weighted
    sum is not (values near 3.4e38, or an absurd weight). Nothing was written."""


class StrategyError(ValueError):
    """Settings a strategy cannot work with; the message says which and what to do."""


@dataclass(frozen=True)
class AggregationContext:
    """What an aggregation may need to know when it starts."""

    #: The model the version starts from (names, shapes, dtypes; read-only).
    template: Mapping[str, np.ndarray]
    #: The most updates this version will receive (the quorum or buffer size K).
    capacity: int
    #: Bytes of RAM an aggregation that holds updates may use before spilling to disk.
    memory_budget: int
    #: Where such spill files go; they are deleted when the aggregation is.
    spill_dir: Path
    #: The version being made (for seeding, e.g. differential privacy's noise).
    version: int
    #: The largest share of the version's total weight one update may have, in [0.5, 1]
    #: (1: no cap); see :func:`weight_cap`.
    max_weight_share: float = NO_WEIGHT_CAP


class Aggregation(abc.ABC):
    """One version's aggregation in progress."""

    def __init__(self) -> None:
        self.count = 0

    @abc.abstractmethod
    def add(self, delta: Delta, weight: float, scale: float = 1.0) -> None:
        """Take ``scale * delta`` with example weight ``weight`` (> 0); scale in (0, 1]."""

    def add_pieces(self, pieces: DeltaPieces, weight: float, scale: float = 1.0) -> None:
        """``add`` for a delta read in pieces. This default makes it whole first (O(model)
        memory per call); streaming aggregations override it to fold piece by piece."""
        self.add(pieces.materialize(), weight, scale)

    @abc.abstractmethod
    def result(self) -> Weights:
        """The aggregated delta (float32, the template's shapes). Needs count >= 1. Called
        once, when the version closes; it may hand over its own buffers."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the aggregation holds (spill files). Safe to call twice."""

    def early_folds(self) -> EarlyFolds | None:
        """Itself, from now on taking chunked updates' chunks as they come, when it can
        (:mod:`.early_mean`); None when it takes updates whole only (this default)."""
        return None


class EarlyFolds(abc.ABC):
    """An aggregation that folds a chunked update's chunks as they come, before the update
    is whole and checked, and takes them out again, exactly, if it is refused.

    ``key`` names one update (its id) while it is in assembly. A chunk is folded only
    after :meth:`begin` said yes for its update; :meth:`admit` then takes the whole
    (whether or not its chunks were folded early) and :meth:`drop` takes out the chunks of
    an update refused or still incomplete. Every method may run in a worker thread, one at
    a time."""

    @abc.abstractmethod
    def begin(self, key: str, weight: float, scale: float) -> bool:
        """Whether the chunks of update ``key`` (its example ``weight`` and staleness
        ``scale``) are folded as they come, from its first."""

    @abc.abstractmethod
    def fold(self, key: str, chunk: DeltaPieces, sum_squares: float) -> bool:
        """Fold the next chunk of update ``key`` (its values and the sum of their
        squares; every chunk once, a copy never). False when it was not: ``key`` was not
        begun, or its folds cannot be proven finite without a pass of their own (the
        update is then taken whole when admitted)."""

    @abc.abstractmethod
    def drop(self, key: str) -> None:
        """Take the chunks of update ``key`` out of the sums (none folded: nothing)."""

    @abc.abstractmethod
    def admit(
        self, key: str, pieces: DeltaPieces, weight: float, scale: float, chunks: int
    ) -> bool:
        """Take update ``key``, whole and checked, that came in ``chunks`` messages, as
        ``add_pieces`` would (FoldOverflow with nothing changed); False when these pieces
        cannot be read again (a delta in memory): the caller adds them with
        ``add_pieces``."""


class Aggregator(abc.ABC):
    """A rule that combines one version's deltas, e.g. the weighted mean or the median."""

    #: Short name used in flags, the ledger and the history.
    name: str = ""
    #: True when every delta of a version must be kept until ``result`` (K x P memory).
    holds_updates: bool = False
    #: Offered as ``--aggregator <name>``.
    by_name: bool = True

    @abc.abstractmethod
    def start(self, context: AggregationContext) -> Aggregation: ...

    def check(self, capacity: int) -> None:  # noqa: B027 - optional hook
        """Raise StrategyError if this rule cannot work with ``capacity`` updates (Krum)."""


class ServerOptimizer(abc.ABC):
    """theta_{v+1} from theta_v and the aggregated delta (a pseudo-gradient, pointing
    towards improvement: FedAvg adds it)."""

    name: str = ""

    @abc.abstractmethod
    def step(self, weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Weights:
        """The new model; ``weights`` is left untouched (it is the committed version).
        ``delta`` (the aggregation's result, used for nothing else) may be overwritten,
        e.g. to become the new model without another model-sized buffer."""

    def state(self) -> State:
        """Arrays to save with the checkpoint by name (any string), empty if stateless."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:  # noqa: B027
        """Continue from ``state`` as returned by :meth:`state` (may be empty: fresh)."""
