"""``fedq.apps.synthetic:app``: numpy only, no training, for system benchmarks.

``train`` returns ``weights + delta`` where the delta is small, deterministic per
(partition, round) and cheap to make, so a benchmark measures fedq and the broker, not
TensorFlow. ``FEDQ_SYNTHETIC_PARAMS`` sets the parameter count (default 100_000).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from fedq.messages.codec import Weights
from fedq.participant.app import Partition, TrainConfig, TrainResult


class SyntheticApp:
    def __init__(self, params: int | None = None, tensors: int = 4) -> None:
        self.params = params or int(os.environ.get("FEDQ_SYNTHETIC_PARAMS", "100000"))
        self.tensors = max(1, min(tensors, self.params))

    def _sizes(self) -> list[int]:
        base, extra = divmod(self.params, self.tensors)
        return [base + (1 if i < extra else 0) for i in range(self.tensors)]

    def initial_weights(self) -> Weights:
        return {f"t{i}": np.zeros(n, dtype=np.float32) for i, n in enumerate(self._sizes())}

    @staticmethod
    def delta_value(index: int) -> float:
        """Every value of partition ``index``'s delta."""
        return 0.001 * (index + 1)

    @staticmethod
    def num_examples(index: int) -> int:
        """Partition ``index``'s FedAvg weight."""
        return 100 * (index + 1)

    @classmethod
    def fedavg_step(cls, indices: Iterable[int]) -> float:
        """What one FedAvg round adds to every parameter when ``indices`` contribute: a run
        on this app can be checked exactly (nothing lost, nothing counted twice)."""
        chosen = list(indices)
        total = sum(cls.num_examples(i) for i in chosen)
        return sum(cls.num_examples(i) * cls.delta_value(i) for i in chosen) / total

    def train(self, weights: Weights, partition: Partition, config: TrainConfig) -> TrainResult:
        # The delta is one value everywhere: adding it as a scalar keeps no delta array
        # around (the app holds only what it returns) and costs one pass, like fedq's own.
        value = np.float32(self.delta_value(partition.index))
        local = {name: w + value for name, w in weights.items()}
        examples = self.num_examples(partition.index)
        return TrainResult(local, num_examples=examples, metrics={"loss": 0.0})

    def evaluate(self, weights: Weights) -> dict[str, float] | None:
        return None


app = SyntheticApp()
