"""Hostile senders against a coordinator on the real RabbitMQ: nothing they publish stalls a
round or grows what the coordinator holds."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import encode_message
from fedq.messages.schema import MESSAGE_TYPES, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology
from tests.conftest import BROKER_URL
from tests.helpers import drain

pytestmark = pytest.mark.broker


def update(federation: str, index: int, value: float, update_id: str | None = None) -> bytes:
    meta = UpdateMeta(
        federation=federation,
        participant=f"p{index}",
        round=1,
        base_version=0,
        num_examples=SyntheticApp.num_examples(index),
        **({"update_id": update_id} if update_id else {}),
    )
    model = SyntheticApp(params=1000).initial_weights()
    return encode_message(meta, {k: np.full_like(v, value) for k, v in model.items()})


async def test_copies_of_a_held_id_and_a_garbage_flood_neither_stall_the_round_nor_count(
    tmp_path: Path, federation: str
):
    """One sender republishes an accepted update's id 20 times, 10 identical and 10 with
    other tensors (NaN, 1e20, plausible values), and 1,000 garbage bodies, all before the
    other participants' updates. The round must still close at quorum, long before its
    deadline, with exactly the three genuine updates."""
    topology = Topology(federation)
    genuine = {i: update(federation, i, SyntheticApp.delta_value(i)) for i in range(3)}
    held_id = "u-p0-round-1"
    genuine[0] = update(federation, 0, SyntheticApp.delta_value(0), held_id)
    altered = [
        update(federation, 0, value, held_id)
        for value in [np.nan, 1e20, -1e20, 0.5, 0.0, 7.0, np.inf, -1e-3, 2e-3, 3e-3]
    ]
    garbage = [b"\xc1" + os.urandom(32) for _ in range(1000)]
    sequence: list[tuple[str, bytes]] = [(held_id, genuine[0])]
    sequence += [(held_id, genuine[0])] * 10 + [(held_id, body) for body in altered]
    sequence += [(f"garbage-{i}", body) for i, body in enumerate(garbage)]
    sequence += [(f"u-p{i}", genuine[i]) for i in (1, 2)]
    config = CoordinatorConfig(
        federation=federation,
        participants=3,
        rounds=1,
        state_dir=tmp_path,
        round_timeout=600,
        linger_seconds=0,
    )
    async with AmqpTransport(BROKER_URL) as sender, AmqpTransport(BROKER_URL) as own:
        await topology.declare_core(sender)
        try:
            for message_id, body in sequence:
                await sender.publish(
                    topology.updates, UPDATE_KEY, body, message_id=message_id,
                    type=MESSAGE_TYPES["update"], mandatory=True,
                )  # fmt: skip
            coordinator = Coordinator(config, SyntheticApp(params=1000), own)
            result = await asyncio.wait_for(coordinator.run(), 120)
            assert [(h["closed_by"], sorted(h["participants"])) for h in result.history] == [
                ("quorum", ["p0", "p1", "p2"])
            ]
            assert result.duplicates == 10
            assert result.rejected_by_reason == {"conflicting_duplicate": 10, "undecodable": 1000}
            assert await sender.queue_depth(topology.updates) == 0
            dead = await drain(BROKER_URL, topology.rejected)
            by_reason: dict[str, Counter[bytes]] = {}
            for d in dead:
                reason = str(d.headers["x-fedq-reason"]).split(":")[0]
                by_reason.setdefault(reason, Counter())[bytes(d.body)] += 1
            assert by_reason == {
                "conflicting_duplicate": Counter(altered),
                "undecodable": Counter(garbage),
            }
            # The ledger keeps each folded update's bytes on the wire: the genuine bodies.
            ledger = UpdateLedger(tmp_path / "ledger.sqlite")
            assert {u.participant: u.size for u in ledger.updates_of(1)} == {
                f"p{i}": len(genuine[i]) for i in range(3)
            }
            assert ledger.history()[0].update_bytes == sum(len(b) for b in genuine.values())
            step = SyntheticApp.fedavg_step([0, 1, 2])
            for tensor in load_checkpoint(checkpoint_path(tmp_path / "models", 1)).values():
                np.testing.assert_allclose(tensor, step, rtol=1e-6)
        finally:
            await topology.delete(sender, [])
