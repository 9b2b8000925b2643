"""An app whose training fails, as a user's buggy app would (used by test_cli)."""

from __future__ import annotations

from fedq.apps.synthetic import SyntheticApp
from fedq.messages.codec import Weights
from fedq.participant.app import Partition, TrainConfig, TrainResult


class BrokenApp(SyntheticApp):
    def train(self, weights: Weights, partition: Partition, config: TrainConfig) -> TrainResult:
        raise ValueError("labels have 3 classes, the model has 2")


app = BrokenApp(params=10)
