"""``version.progress`` goes out beside the collection (coordinator/publish.py,
``Publisher.progress``): the collector, which sends one after each update it folds, never
waits for the broker's confirm of it, and watchers still see every control message after
the progress made before it, the newest progress replacing one still waiting."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.modes import OpenVersion
from fedq.coordinator.publish import Publisher
from fedq.coordinator.version import Version
from fedq.messages.codec import decode_message
from fedq.messages.schema import MESSAGE_TYPES, RoundClosed
from fedq.messages.topology import ROUND_CLOSED, Topology
from fedq.messages.transport import Transport

pytestmark = pytest.mark.pure

#: A safety net, not a measurement: a call that waits for the gate never returns.
HANG = 10.0


class SlowBroker:
    """Records each control message published, in order, as (type, accepted or round);
    a ``version.progress`` is confirmed only once ``gate`` is set."""

    def __init__(self) -> None:
        self.published: list[tuple[str, int]] = []
        self.gate = asyncio.Event()
        self.holding = asyncio.Event()

    async def publish(self, exchange: str, routing_key: str, body: bytes, **properties: Any):
        fields = decode_message(body).fields
        if properties["type"] == MESSAGE_TYPES["version.progress"]:
            self.holding.set()
            await self.gate.wait()
            self.published.append(("progress", fields["accepted"]))
        else:
            self.published.append(("round.closed", fields["round"]))


def version_with(accepted: int) -> Version:
    window = OpenVersion(version=0, round=1, quorum=10, min_quorum=10, deadline_seconds=60.0)
    window.records = [cast(Any, SimpleNamespace(staleness=0))] * accepted
    return cast(Version, SimpleNamespace(window=window, refused=0, duplicates=0, cannot_close=None))


async def test_progress_never_waits_for_its_confirm_and_comes_before_the_next_control(
    tmp_path: Path,
):
    config = CoordinatorConfig(federation="p", participants=10, rounds=2, state_dir=tmp_path)
    broker = SlowBroker()
    publisher = Publisher(config, cast(Transport, broker), Topology("p"))
    try:
        await asyncio.wait_for(publisher.progress(version_with(1), force=True), HANG)
        await asyncio.wait_for(broker.holding.wait(), HANG)  # the broker holds it
        for accepted in (2, 3, 4):  # each returns while the first is not confirmed
            await asyncio.wait_for(publisher.progress(version_with(accepted), force=True), HANG)
        closed = RoundClosed(federation="p", round=1, version=1, reason="quorum", contributors=[])
        control = asyncio.create_task(publisher.control(ROUND_CLOSED, closed))
        await asyncio.sleep(0)  # sleep-ok: one loop turn, for control() to start waiting
        assert not control.done() and broker.published == []
        broker.gate.set()
        await asyncio.wait_for(control, HANG)
        assert broker.published == [("progress", 1), ("progress", 4), ("round.closed", 1)]
    finally:
        await publisher.aclose()
