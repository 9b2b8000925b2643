"""A model sent to one participant's queue beside the versions (a join's answer, a notice to
a participant left behind) never lands after a newer version's fanout: the queue keeps only
its newest message, so an older model arriving last would be what the participant trains
on next, and its update would be stale (coordinator/publish.py, ``Publisher.model``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import numpy as np

from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.modes import OpenVersion
from fedq.coordinator.publish import Publisher
from fedq.messages.codec import decode_message
from fedq.messages.schema import MESSAGE_TYPES
from fedq.messages.topology import Topology
from fedq.messages.transport import Transport
from tests.helpers import polled, until_async

QUEUE = "fedq.order.model.p0"


class Recorder:
    """What was published, in order: (exchange, routing key, model version). A publish to
    ``QUEUE`` waits for ``gate``: the broker slow to take the one-queue copy."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, int]] = []
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def publish(self, exchange: str, routing_key: str, body: bytes, **properties: Any):
        if properties.get("type") != MESSAGE_TYPES["model"]:
            return
        if routing_key == QUEUE:
            self.waiting.set()
            await self.gate.wait()
        version = decode_message(body).fields["version"]
        self.published.append((exchange, routing_key, version))


def window(version: int) -> OpenVersion:
    return OpenVersion(version=version, round=None, quorum=1, min_quorum=1, deadline_seconds=60.0)


async def test_a_copy_to_one_queue_taken_before_a_new_version_lands_before_its_fanout(
    tmp_path: Path,
):
    config = CoordinatorConfig(federation="order", participants=2, rounds=2, state_dir=tmp_path)
    recorder = Recorder()
    publisher = Publisher(config, cast(Transport, recorder), Topology("order"))
    weights = {"w": np.zeros(4, dtype=np.float32)}
    await (await publisher.open(window(0), weights))  # v0's fanout, confirmed
    answer = asyncio.create_task(publisher.model("", QUEUE))  # v0 is the current model
    await recorder.waiting.wait()
    newer = asyncio.create_task(publisher.open(window(1), weights))

    def v1_ready() -> bool:
        """v1 encoded: in the step that stores its body, its fanout is published, or waits
        for the copy to one queue to be out first."""
        return (
            publisher._model_body is not None
            and publisher._model is not None
            and (publisher._model[0].version == 1)
        )

    await until_async(polled(v1_ready), what="v1's body encoded")
    recorder.gate.set()
    await asyncio.gather(answer, newer)
    await newer.result()  # v1's fanout
    models = Topology("order").models
    assert recorder.published == [(models, "", 0), ("", QUEUE, 0), (models, "", 1)]
