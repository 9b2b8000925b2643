"""An app that behaves as another except where an experiment says otherwise."""

from __future__ import annotations

from typing import Any

from fedq.messages.codec import Weights
from fedq.participant.app import App, Partition, TrainConfig, TrainResult, train_on


class AppWrapper:
    """``app`` itself for every hook a subclass does not change: its weights, evaluation,
    ``train_config``, ``check``, ``export`` and the like, and the hooks ``accepts`` and
    ``transform_delta`` (a subclass adds its own on top). Wrappers nest."""

    def __init__(self, app: App) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    def initial_weights(self) -> Weights:
        return self.app.initial_weights()

    def evaluate(self, weights: Weights) -> dict[str, float] | None:
        return self.app.evaluate(weights)

    async def train(
        self, weights: Weights, partition: Partition, config: TrainConfig
    ) -> TrainResult:
        """The wrapped app's training, in a worker thread unless it is a coroutine itself."""
        return await train_on(self.app, weights, partition, config)

    def accepts(self, version: int) -> bool:
        accepts = getattr(self.app, "accepts", None)
        return accepts is None or bool(accepts(version))

    def transform_delta(self, delta: Weights) -> Weights:
        transform = getattr(self.app, "transform_delta", None)
        return delta if transform is None else transform(delta)
