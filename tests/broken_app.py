"""Apps whose training or export fails or is wrong, as a user's buggy app would (used by
test_cli and test_export)."""

from __future__ import annotations

from pathlib import Path

from fedq.apps.synthetic import SyntheticApp
from fedq.messages.codec import Weights
from fedq.participant.app import Partition, TrainConfig, TrainResult


class BrokenApp(SyntheticApp):
    def train(self, weights: Weights, partition: Partition, config: TrainConfig) -> TrainResult:
        raise ValueError("labels have 3 classes, the model has 2")


app = BrokenApp(params=10)


class InPlaceApp(SyntheticApp):
    """Trains in the arrays it was given and returns them (or views of them): the delta
    fedq would compute from them is all zeros."""

    def __init__(self, params: int, view: bool = False) -> None:
        super().__init__(params=params)
        self.view = view

    def train(self, weights: Weights, partition: Partition, config: TrainConfig) -> TrainResult:
        for w in weights.values():
            w += 0.5
        local = {name: w[:] if self.view else w for name, w in weights.items()}
        return TrainResult(local, num_examples=10)


in_place = InPlaceApp(params=10)


class BrokenExportApp(SyntheticApp):
    """Lists a format of its own and fails to write it."""

    export_formats = ("npz",)

    def export(self, weights: Weights, path: Path, format: str) -> None:
        raise ValueError("cannot write an npz file\nsecond line of the message")


broken_export = BrokenExportApp(params=10)
