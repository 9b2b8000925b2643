"""What every strategy part is: small, pure numpy, with explicit state.

A version's aggregated delta is made in three steps, each a part chosen per federation:

1. an :class:`Aggregator` starts one :class:`Aggregation` per version and is given each
   accepted update as ``add(delta, weight, scale)``: ``weight`` is the update's example
   count (FedAvg's w_k before normalisation) and ``scale`` its staleness factor s(tau) in
   (0, 1]. The update contributes ``scale * delta``; the normaliser uses ``weight`` only,
   so an all-fresh version is plain FedAvg and stale updates shrink the step (FedBuff).
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
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Weights = dict[str, np.ndarray]
Delta = Mapping[str, np.ndarray]
State = dict[str, np.ndarray]


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


class Aggregation(abc.ABC):
    """One version's aggregation in progress."""

    def __init__(self) -> None:
        self.count = 0

    @abc.abstractmethod
    def add(self, delta: Delta, weight: float, scale: float = 1.0) -> None:
        """Take ``scale * delta`` with example weight ``weight`` (> 0); scale in (0, 1]."""

    @abc.abstractmethod
    def result(self) -> Weights:
        """The aggregated delta (float32, the template's shapes). Needs count >= 1."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the aggregation holds (spill files). Safe to call twice."""


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
        """The new model; ``weights`` is left untouched (it is the committed version)."""

    def state(self) -> State:
        """Arrays to save with the checkpoint by name (any string), empty if stateless."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:  # noqa: B027
        """Continue from ``state`` as returned by :meth:`state` (may be empty: fresh)."""
