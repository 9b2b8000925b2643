"""Stragglers and network delay: a participant that takes ``slowdown`` x its real
training time, plus ``delay_seconds``, each round.

The wait happens after training, on the event loop, outside the process's working slot
(:func:`fedq.participant.working.pausing`): an emulated straggler holds up no other
participant of its process, and no worker thread. The update's ``train_seconds`` includes
the wait, as a real straggler's would.
"""

from __future__ import annotations

import asyncio
import time

from fedq.experiments.wrapper import AppWrapper
from fedq.messages.codec import Weights
from fedq.participant.app import App, Partition, TrainConfig, TrainResult
from fedq.participant.working import pausing


class Straggler(AppWrapper):
    def __init__(self, app: App, slowdown: float = 1.0, delay_seconds: float = 0.0) -> None:
        super().__init__(app)
        self.slowdown = slowdown
        self.delay_seconds = delay_seconds

    async def train(
        self, weights: Weights, partition: Partition, config: TrainConfig
    ) -> TrainResult:
        started = time.monotonic()
        result = await super().train(weights, partition, config)
        extra = (self.slowdown - 1) * (time.monotonic() - started) + self.delay_seconds
        if extra > 0:
            async with pausing():
                await asyncio.sleep(extra)
        return result
