"""In async mode one participant may not fill a version alone with updates trained on
several recent models: its second update in a version is ``already_submitted``,
dead-lettered with that reason, and the version is made of two participants. On the real
RabbitMQ."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import encode_message
from fedq.messages.schema import MESSAGE_TYPES, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology
from fedq.messages.transport import Transport
from tests.conftest import BROKER_URL
from tests.helpers import drain, until_async

pytestmark = pytest.mark.broker


async def _send(sender: Transport, topology: Topology, participant: str, base: int) -> str:
    meta = UpdateMeta(
        federation=topology.federation, participant=participant, base_version=base, num_examples=10
    )
    delta = {k: np.full_like(v, 0.01) for k, v in SyntheticApp(params=10).initial_weights().items()}
    await sender.publish(
        topology.updates,
        UPDATE_KEY,
        encode_message(meta, delta),
        message_id=meta.update_id,
        type=MESSAGE_TYPES["update"],
        mandatory=True,
    )
    return meta.update_id


async def _committed(state: Path, version: int) -> None:
    async def updates() -> int:
        if not (state / "ledger.sqlite").exists():
            return 0
        ledger = UpdateLedger(state / "ledger.sqlite")
        try:
            return len(ledger.updates_of(version))
        finally:
            ledger.close()

    await until_async(updates, what=f"v{version} committed")


async def test_one_participant_cannot_fill_an_async_version_with_several_base_versions(
    tmp_path, federation
):
    topology = Topology(federation)
    config = CoordinatorConfig(
        federation=federation,
        participants=3,
        rounds=2,
        state_dir=tmp_path,
        mode="async",
        quorum=2,
        linger_seconds=0,
    )
    async with AmqpTransport(BROKER_URL) as own, AmqpTransport(BROKER_URL) as sender:
        await topology.declare_core(sender)
        run = asyncio.create_task(Coordinator(config, SyntheticApp(params=10), own).run())
        try:
            await _send(sender, topology, "p1", 0)
            await _send(sender, topology, "p2", 0)
            await _committed(tmp_path, 1)
            await _send(sender, topology, "p0", 0)  # on v0, one version behind
            second = await _send(sender, topology, "p0", 1)  # on v1: a second in v2
            await _send(sender, topology, "p1", 1)
            await _committed(tmp_path, 2)
            await asyncio.wait_for(run, 30)
            dead = await drain(BROKER_URL, topology.rejected)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await topology.delete(sender, [])
    updates = UpdateLedger(tmp_path / "ledger.sqlite").updates_of(2)
    assert sorted(u.participant for u in updates) == ["p0", "p1"]
    assert [(d.message_id, str(d.headers["x-fedq-reason"]).split(":")[0]) for d in dead] == [
        (second, "already_submitted")
    ]
