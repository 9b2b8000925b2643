"""The coordinator alone, fed by hand on both brokers: what it folds, acks and refuses."""

from __future__ import annotations

import asyncio

import numpy as np

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.records import VersionSummary
from fedq.coordinator.service import Coordinator
from fedq.messages.codec import encode_message
from fedq.messages.schema import MESSAGE_TYPES, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology


async def test_the_same_update_twice_in_a_round_is_folded_once_and_both_copies_are_acked(
    transport_pair, federation, tmp_path
):
    coordinator_transport, sender = transport_pair
    app = SyntheticApp(params=6)
    config = CoordinatorConfig(federation=federation, participants=2, rounds=1, state_dir=tmp_path)
    topology = Topology(federation)
    await topology.declare_core(sender)

    async def send(participant: str, delta: float, examples: int, copies: int) -> None:
        meta = UpdateMeta(
            federation=federation, participant=participant, round=1, base_version=0,
            num_examples=examples,
        )  # fmt: skip
        tensors = {k: np.full_like(v, delta) for k, v in app.initial_weights().items()}
        for _ in range(copies):  # a publisher retrying after a lost confirm sends it again
            await sender.publish(
                topology.updates, UPDATE_KEY, encode_message(meta, tensors),
                message_id=meta.update_id, type=MESSAGE_TYPES["update"], mandatory=True,
            )  # fmt: skip

    try:
        await send("a", 1.0, 10, copies=2)
        await send("b", 4.0, 30, copies=1)
        result = await asyncio.wait_for(Coordinator(config, app, coordinator_transport).run(), 30)
        assert (result.updates_incorporated, result.updates_rejected) == (2, 0)
        for tensor in load_checkpoint(checkpoint_path(tmp_path / "models", 1)).values():
            np.testing.assert_allclose(tensor, (10 * 1.0 + 30 * 4.0) / 40)
        assert await sender.queue_depth(topology.updates) == 0  # nothing came back unacked
    finally:
        await topology.delete(sender, [])


async def test_observers_get_what_was_refused_during_a_version_as_the_ledger_reads_it_back(
    transport_pair, federation, tmp_path
):
    """The record of a commit counts the copies and refusals settled while the version was
    open, by reason, exactly as the ledger's history reads them back."""
    coordinator_transport, sender = transport_pair
    app = SyntheticApp(params=6)
    config = CoordinatorConfig(federation=federation, participants=2, rounds=1, state_dir=tmp_path)
    topology = Topology(federation)
    await topology.declare_core(sender)
    committed: list[VersionSummary] = []

    class Watch(CoordinatorObserver):
        def version_committed(self, row: VersionSummary) -> None:
            committed.append(row)

    async def publish(body: bytes, message_id: str) -> None:
        await sender.publish(
            topology.updates, UPDATE_KEY, body,
            message_id=message_id, type=MESSAGE_TYPES["update"], mandatory=True,
        )  # fmt: skip

    tensors = {k: np.full_like(v, 1.0) for k, v in app.initial_weights().items()}
    try:
        await publish(b"\xc1 not msgpack", "garbage")  # first: the version is open then
        for participant in ("a", "b"):
            meta = UpdateMeta(
                federation=federation, participant=participant, round=1, base_version=0,
                num_examples=10,
            )  # fmt: skip
            body = encode_message(meta, tensors)
            for _ in range(2 if participant == "a" else 1):
                await publish(body, meta.update_id)
        coordinator = Coordinator(config, app, coordinator_transport, [Watch()])
        await asyncio.wait_for(coordinator.run(), 30)
        stored = UpdateLedger(tmp_path / "ledger.sqlite").history()
        assert committed == stored
        assert committed[0].rejected == {"duplicate": 1, "undecodable": 1}
    finally:
        await topology.delete(sender, [])
