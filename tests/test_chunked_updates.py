"""Chunked updates against a coordinator on the real RabbitMQ: lost, copied, reordered and
tampered chunks, a sender that stops halfway, and a coordinator killed (-9) while chunks
of several updates are in flight. Each time nothing is applied twice, nothing partial is
applied, the federation completes, and the refused chunks are in the DLQ with a reason.
Participants cut their updates at the chunk size the coordinator's model announces."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.observers import CoordinatorObserver, UpdateSeen
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.chunks import chunk_count, encode_chunks
from fedq.messages.schema import MESSAGE_TYPES, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology
from fedq.messages.transport import Delivery, Transport
from fedq.participant.app import Partition
from fedq.participant.config import ParticipantConfig
from fedq.participant.worker import Participant
from tests.conftest import BROKER_URL
from tests.helpers import drain, start_fedq, until_async

pytestmark = [pytest.mark.broker, pytest.mark.processes]

PARAMS = 100_000  # 400 kB of float32: 7 chunks of at most 64 KiB
CHUNK = 1 << 16


def chunks(federation: str, index: int, update_id: str, round_: int = 1) -> list[bytes]:
    """Participant ``index``'s synthetic update on model v(round - 1), as chunk bodies."""
    meta = UpdateMeta(
        federation=federation,
        participant=f"p{index}",
        round=round_,
        base_version=round_ - 1,
        num_examples=SyntheticApp.num_examples(index),
        update_id=update_id,
    )
    model = SyntheticApp(params=PARAMS).initial_weights()
    delta = {k: np.full_like(v, SyntheticApp.delta_value(index)) for k, v in model.items()}
    return list(encode_chunks(meta, delta, "raw", CHUNK))


async def publish(
    sender: Transport, topology: Topology, update_id: str, bodies: list[bytes]
) -> None:
    for body in bodies:
        await sender.publish(
            topology.updates, UPDATE_KEY, body, message_id=update_id,
            type=MESSAGE_TYPES["update"], mandatory=True,
        )  # fmt: skip


def two_participants(federation: str, state_dir: Path) -> CoordinatorConfig:
    """One round of two participants, chunks as sent here, a 2 s chunk timeout."""
    return CoordinatorConfig(
        federation=federation, participants=2, rounds=1, state_dir=state_dir,
        round_timeout=600, linger_seconds=0, chunk_bytes=CHUNK, chunk_timeout=2,
    )  # fmt: skip


class Refusals(CoordinatorObserver):
    """The reasons of the updates an in-process coordinator refused so far ("folded" for
    one it folded): a test waits for one (the chunk timeout's ``incomplete``) instead of
    sleeping past the timeout."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()

    def update_seen(self, update: UpdateSeen) -> None:
        self.reasons[update.reason or "folded"] += 1

    async def until(self, reason: str, times: int = 1) -> None:
        async def reached() -> bool:
            return self.reasons[reason] >= times

        await until_async(reached, what=f"{times} updates {reason!r}", within=60)


def dead_letters_by_reason(dead: list[Delivery]) -> dict[str, Counter[bytes]]:
    out: dict[str, Counter[bytes]] = {}
    for d in dead:
        reason = str(d.headers["x-fedq-reason"]).split(":")[0]
        out.setdefault(reason, Counter())[bytes(d.body)] += 1
    return out


def assert_model_is_fedavg(state_dir: Path, rounds: list[list[int]]) -> None:
    """The last checkpoint is exactly the FedAvg of the given contributors per round."""
    expected = sum(SyntheticApp.fedavg_step(who) for who in rounds)
    weights = load_checkpoint(checkpoint_path(state_dir / "models", len(rounds)))
    assert sum(w.size for w in weights.values()) == PARAMS
    for tensor in weights.values():
        np.testing.assert_allclose(tensor, expected, rtol=1e-6)


async def test_participants_cut_their_updates_at_the_size_the_coordinator_announces(
    tmp_path: Path,
    federation: str,
    transport_pair: tuple[Transport, Transport],
    monkeypatch: pytest.MonkeyPatch,
):
    """No participant setting: the coordinator's chunk size travels in its model, and each
    update comes as the chunks that size makes of it (at the default size, one message)."""
    coordinator_side, participant_side = transport_pair
    app = SyntheticApp(params=PARAMS)
    expected = chunk_count(app.initial_weights(), CHUNK)
    assert expected == 7
    sent: list[Mapping[str, Any]] = []
    publish = participant_side.publish

    async def recording(exchange: str, routing_key: str, body: bytes, **options: Any) -> None:
        if options.get("type") == MESSAGE_TYPES["update"]:
            sent.append(options["headers"])
        await publish(exchange, routing_key, body, **options)

    monkeypatch.setattr(participant_side, "publish", recording)
    coordinator = Coordinator(two_participants(federation, tmp_path), app, coordinator_side)
    await coordinator.topology.declare_core(coordinator_side)
    participants = [
        Participant(
            ParticipantConfig(
                federation=federation, participant_id=f"p{i}", partition=Partition(i, 2)
            ),
            app,
            participant_side,
        )
        for i in range(2)
    ]
    try:
        running = asyncio.create_task(coordinator.run())
        await asyncio.wait_for(asyncio.gather(*(p.run() for p in participants)), 120)
        result = await asyncio.wait_for(running, 60)
    finally:
        await coordinator.topology.delete(coordinator_side, ["p0", "p1"])
    assert [sorted(h["participants"]) for h in result.history] == [["p0", "p1"]]
    assert sorted((h["participant"], h["chunk_index"], h["chunk_count"]) for h in sent) == [
        (f"p{i}", index, expected) for i in range(2) for index in range(expected)
    ]


async def test_lost_copied_reordered_and_tampered_chunks(tmp_path: Path, federation: str):
    """p1's first update loses a chunk (refused ``incomplete`` after the timeout); its
    second has its first chunk altered in transit, which then does not carry its own digest
    (``digest_mismatch`` at once, that chunk alone: another could still come in its place),
    so its other chunks are ``incomplete`` after the timeout; p0's arrives in reverse order
    with one chunk twice, and p1's third is honest. The version is exactly FedAvg of p0's
    and p1's honest updates."""
    topology = Topology(federation)
    lost = chunks(federation, 1, "lost")
    missing = lost.pop(3)
    tampered = chunks(federation, 1, "tampered")
    altered = bytearray(tampered[0])
    altered[-4] ^= 0x01  # the lowest mantissa byte of the last value: still finite
    tampered[0] = bytes(altered)
    reordered = chunks(federation, 0, "reordered")[::-1]
    reordered.insert(3, reordered[5])  # chunk 1, twice
    honest = chunks(federation, 1, "honest")
    assert missing not in lost and len(honest) == 7
    config = two_participants(federation, tmp_path)
    async with AmqpTransport(BROKER_URL) as sender, AmqpTransport(BROKER_URL) as own:
        await topology.declare_core(sender)
        try:
            refusals = Refusals()
            coordinator = Coordinator(config, SyntheticApp(params=PARAMS), own, [refusals])
            run = asyncio.create_task(coordinator.run())
            await publish(sender, topology, "lost", lost)
            await publish(sender, topology, "tampered", tampered)
            await publish(sender, topology, "reordered", reordered)
            await refusals.until("incomplete", times=2)  # both timed out
            await publish(sender, topology, "honest", honest)
            result = await asyncio.wait_for(run, 120)
            assert [sorted(h["participants"]) for h in result.history] == [["p0", "p1"]]
            assert result.rejected_by_reason == {"incomplete": 2, "digest_mismatch": 1}
            assert result.duplicates == 1
            assert await sender.queue_depth(topology.updates) == 0
            dead = dead_letters_by_reason(await drain(BROKER_URL, topology.rejected))
            assert dead == {
                "incomplete": Counter(lost + tampered[1:]),
                "digest_mismatch": Counter(tampered[:1]),
            }
            ledger = UpdateLedger(tmp_path / "ledger.sqlite")
            assert {u.update_id: u.size for u in ledger.updates_of(1)} == {
                "reordered": sum(len(b) for b in set(reordered)),
                "honest": sum(len(b) for b in honest),
            }
            ledger.close()
            assert_model_is_fedavg(tmp_path, [[0, 1]])
        finally:
            await topology.delete(sender, [])


async def test_an_altered_copy_of_a_held_chunk_is_refused_and_the_held_one_kept(
    tmp_path: Path, federation: str
):
    """p0's update is folded and held: the version waits for p1. Copies of its chunk 2
    that carry the same whole digest, one with a value altered and one with the same
    values under other metadata, are refused ``conflicting_duplicate`` (in the DLQ byte for
    byte), not held in place of the honest chunk: the coordinator stops before the commit,
    the next one rebuilds p0's update from what the broker kept, and the version is exactly
    FedAvg of p0's and p1's."""
    topology = Topology(federation)
    honest = chunks(federation, 0, "p0")
    altered = bytearray(honest[2])
    altered[-4] ^= 0x01  # the lowest mantissa byte of the last value: still finite
    model = SyntheticApp(params=PARAMS).initial_weights()
    other_meta = UpdateMeta(
        federation=federation, participant="p0", round=1, base_version=0,
        num_examples=SyntheticApp.num_examples(0) + 1, update_id="p0",
    )  # fmt: skip
    delta = {k: np.full_like(v, SyntheticApp.delta_value(0)) for k, v in model.items()}
    relabelled = list(encode_chunks(other_meta, delta, "raw", CHUNK))[2]
    copies = [bytes(altered), relabelled]
    config = two_participants(federation, tmp_path)
    async with AmqpTransport(BROKER_URL) as sender:
        await topology.declare_core(sender)
        try:
            refusals = Refusals()
            async with AmqpTransport(BROKER_URL) as own:
                coordinator = Coordinator(config, SyntheticApp(params=PARAMS), own, [refusals])
                run = asyncio.create_task(coordinator.run())
                try:
                    await publish(sender, topology, "p0", honest)
                    await refusals.until("folded")
                    await publish(sender, topology, "p0", copies)
                    await refusals.until("conflicting_duplicate", times=2)
                finally:
                    run.cancel()
                    await asyncio.gather(run, return_exceptions=True)
            assert refusals.reasons == {"folded": 1, "conflicting_duplicate": 2}
            async with AmqpTransport(BROKER_URL) as own:
                coordinator = Coordinator(config, SyntheticApp(params=PARAMS), own)
                run = asyncio.create_task(coordinator.run())
                await publish(sender, topology, "p1", chunks(federation, 1, "p1"))
                result = await asyncio.wait_for(run, 120)
            assert [sorted(h["participants"]) for h in result.history] == [["p0", "p1"]]
            assert result.rejected_by_reason == {"conflicting_duplicate": 2}  # the ledger's
            dead = dead_letters_by_reason(await drain(BROKER_URL, topology.rejected))
            assert dead == {"conflicting_duplicate": Counter(copies)}
            assert_model_is_fedavg(tmp_path, [[0, 1]])
        finally:
            await topology.delete(sender, [])


async def test_a_sender_that_stops_halfway_and_sends_again(tmp_path: Path, federation: str):
    """A participant dies after 3 of its 7 chunks; restarted, it trains again and sends a
    new update (a new id). The partial one is refused ``incomplete``, the new one counts."""
    topology = Topology(federation)
    partial = chunks(federation, 0, "first-try")[:3]
    config = two_participants(federation, tmp_path)
    async with AmqpTransport(BROKER_URL) as sender, AmqpTransport(BROKER_URL) as own:
        await topology.declare_core(sender)
        try:
            refusals = Refusals()
            coordinator = Coordinator(config, SyntheticApp(params=PARAMS), own, [refusals])
            run = asyncio.create_task(coordinator.run())
            await publish(sender, topology, "first-try", partial)
            await publish(sender, topology, "p1", chunks(federation, 1, "p1"))
            await refusals.until("incomplete")  # the partial one timed out: p0 sends again
            await publish(sender, topology, "second-try", chunks(federation, 0, "second-try"))
            result = await asyncio.wait_for(run, 120)
            assert result.rejected_by_reason == {"incomplete": 1}
            dead = dead_letters_by_reason(await drain(BROKER_URL, topology.rejected))
            assert dead == {"incomplete": Counter(partial)}
            assert_model_is_fedavg(tmp_path, [[0, 1]])
        finally:
            await topology.delete(sender, [])


async def test_a_participant_process_killed_halfway_through_sending(
    tmp_path: Path, federation: str, monkeypatch: pytest.MonkeyPatch
):
    """A real ``fedq participant`` gets SIGKILL while its update's chunks are going out
    (its spool file at the coordinator has begun). Restarted, it finds the model again,
    trains and sends a new update: the partial one is refused ``incomplete``, the version is
    exactly FedAvg of the new one and the other participant's."""
    params = 5_000_000  # 20 MB: 306 chunks of 64 KiB, sent one after another
    monkeypatch.setenv("FEDQ_SYNTHETIC_PARAMS", str(params))
    config = two_participants(federation, tmp_path)
    topology = Topology(federation)
    args = ["--app", "fedq.apps.synthetic:app", "--federation", federation]
    args += ["--broker", BROKER_URL]  # chunks of CHUNK: the size the coordinator's model says

    def participant(i: int, log: str) -> subprocess.Popen[bytes]:
        return start_fedq("participant", *args, "--id", f"p{i}", "--partition", f"{i}/2",
                          log=tmp_path / log)  # fmt: skip

    async with AmqpTransport(BROKER_URL) as own:
        refusals = Refusals()
        coordinator = Coordinator(config, SyntheticApp(params=params), own, [refusals])
        run = asyncio.create_task(coordinator.run())
        first = participant(0, "p0-first.log")
        try:
            spool = tmp_path / "spool"

            async def spooled() -> int:
                return len(list(spool.glob("*.chunks"))) if spool.is_dir() else 0

            # p0's first chunks are in the coordinator's spool (its last not yet sent).
            await until_async(spooled, what="p0's update begun in the spool", every=0.005)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
            assert await spooled() == 1, (tmp_path / "p0-first.log").read_text()
            await refusals.until("incomplete")  # refused while the round is open
            others = [participant(0, "p0-second.log"), participant(1, "p1.log")]
            result = await asyncio.wait_for(run, 180)
            for process in others:
                assert process.wait(timeout=60) == 0
            assert result.rejected_by_reason == {"incomplete": 1}
            assert [sorted(h["participants"]) for h in result.history] == [["p0", "p1"]]
            weights = load_checkpoint(checkpoint_path(tmp_path / "models", 1))
            for tensor in weights.values():
                np.testing.assert_allclose(tensor, SyntheticApp.fedavg_step([0, 1]), rtol=1e-6)
        finally:
            if first.poll() is None:
                first.kill()
            await topology.delete(own, ["p0", "p1"])


async def test_coordinator_killed_while_chunks_of_several_updates_are_in_flight(
    tmp_path: Path, federation: str, monkeypatch: pytest.MonkeyPatch
):
    """Three updates' chunks are half in when the coordinator gets SIGKILL: they are held,
    spooled and unacked. A new coordinator gets them all again with the rest and makes
    the version from exactly those three updates, each once."""
    topology = Topology(federation)
    updates = {i: chunks(federation, i, f"u{i}") for i in range(3)}
    app = ["--app", "fedq.apps.synthetic:app"]
    where = ["--federation", federation, "--broker", BROKER_URL, "--state-dir", str(tmp_path)]
    shape = ["--participants", "3", "--rounds", "1", "--linger", "0", "--chunk-bytes", str(CHUNK)]
    monkeypatch.setenv("FEDQ_SYNTHETIC_PARAMS", str(PARAMS))
    async with AmqpTransport(BROKER_URL) as sender:
        await topology.declare_core(sender)
        first = start_fedq("coordinator", *app, *where, *shape, log=tmp_path / "c1.log")
        try:
            for i, bodies in updates.items():
                await publish(sender, topology, f"u{i}", bodies[:4])
            spool = tmp_path / federation / "spool"

            async def held() -> tuple[int, int]:
                """(messages left in the queue, updates begun in the spool)"""
                files = len(list(spool.glob("*.chunks"))) if spool.is_dir() else 0
                return await sender.queue_depth(topology.updates), files

            # The coordinator holds them all (delivered, unacked) and spooled each update.
            await until_async(held, lambda h: h == (0, 3), what="3 updates held and spooled")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
            for i, bodies in updates.items():
                await publish(sender, topology, f"u{i}", bodies[4:])
            second = start_fedq("coordinator", *app, *where, *shape, log=tmp_path / "c2.log")
            assert second.wait(timeout=120) == 0, (tmp_path / "c2.log").read_text()
            ledger = UpdateLedger(tmp_path / federation / "ledger.sqlite")
            assert sorted(u.update_id for u in ledger.updates_of(1)) == ["u0", "u1", "u2"]
            assert ledger.count_updates() == 3
            ledger.close()
            assert await sender.queue_depth(topology.updates) == 0
            assert await sender.queue_depth(topology.rejected) == 0
            assert_model_is_fedavg(tmp_path / federation, [[0, 1, 2]])
        finally:
            if first.poll() is None:
                first.kill()
            await topology.delete(sender, [])
