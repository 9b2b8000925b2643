"""The dead-letter queue keeps evidence within a bound, on the real RabbitMQ.

``fedq.F.rejected`` is declared by the coordinator with ``--dead-letter-bytes`` and
``x-overflow: reject-publish``: a flood of bad updates fills it and then RabbitMQ refuses
new copies, so the first evidence stays (drop-head would let the flood push it out). A
refused delivery whose copy the broker refused is acked all the same, recorded in the
ledger and counted, with one warning line for the flood. With ``--verify-identity`` one
broker user's copies take at most ``--dead-letter-share`` of the queue, so another
participant's refused update still gets its copy. A queue left by an older fedq, without
these arguments, is one line saying what to do.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator import evidence as evidence_module
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.evidence import (
    QUEUE_FULL,
    SENDER_SHARE,
    SENDER_SLACK,
    Evidence,
    without_copy,
)
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.observers import CoordinatorObserver, Observers
from fedq.coordinator.service import Coordinator
from fedq.coordinator.verdicts import Outcome
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import Weights, encode_message
from fedq.messages.schema import MESSAGE_TYPES, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology
from fedq.messages.transport import Inequivalent
from fedq.metrics import PrometheusMetrics
from tests.broker_users import broker_users
from tests.conftest import BROKER_URL
from tests.helpers import drain, run_fedq

pytestmark = [pytest.mark.broker, pytest.mark.processes]

PARAMS = 10
#: The DLQ's byte bound in these tests: room for ten of the flood's bodies.
BOUND = 4096
FLOOD = 40
BODY = 401  # bytes of each flood body: undecodable, each different
EXAMPLES = (10, 20, 30)


def flood_body(i: int) -> bytes:
    return b"\xc1" + f"{i:04d}".encode() * 100


class DropCounter(CoordinatorObserver):
    def __init__(self) -> None:
        self.dropped: Counter[tuple[str, str]] = Counter()

    def dead_letter_dropped(self, reason: str, cause: str) -> None:
        self.dropped[reason, cause] += 1


def delta(i: int) -> Weights:
    rng = np.random.default_rng(i)
    start = SyntheticApp(params=PARAMS).initial_weights()
    return {k: (rng.standard_normal(v.shape) * 0.01).astype(np.float32) for k, v in start.items()}


def honest_update(federation: str, participant: str, i: int) -> tuple[str, bytes]:
    meta = UpdateMeta(
        federation=federation, participant=participant, round=1, base_version=0,
        num_examples=EXAMPLES[i], update_id=f"u-{participant}",
    )  # fmt: skip
    return meta.update_id, encode_message(meta, delta(i))


def assert_exact_fedavg(state: Path) -> None:
    """The committed v1 is the example-weighted mean of the three honest deltas."""
    committed = load_checkpoint(checkpoint_path(state / "models", 1))
    start = SyntheticApp(params=PARAMS).initial_weights()
    total = sum(EXAMPLES)
    for name, tensor in committed.items():
        mean = sum(w * delta(i)[name].astype(np.float64) for i, w in enumerate(EXAMPLES))
        np.testing.assert_allclose(tensor, start[name] + mean / total, rtol=1e-5, atol=1e-7)


async def publish(url: str, topology: Topology, messages: Sequence[tuple[str, bytes]]) -> None:
    async with AmqpTransport(url) as sender:
        for message_id, body in messages:
            await sender.publish(
                topology.updates, UPDATE_KEY, body, message_id=message_id,
                type=MESSAGE_TYPES["update"], mandatory=True,
            )  # fmt: skip


async def run_coordinator(
    config: CoordinatorConfig, topology: Topology, *observers: CoordinatorObserver
) -> tuple[Any, list[Any]]:
    """Run the coordinator over what was published: its result and the DLQ's contents,
    after checking that every delivery was settled (the updates queue is empty)."""
    async with AmqpTransport(BROKER_URL) as own:
        coordinator = Coordinator(config, SyntheticApp(params=PARAMS), own, observers)
        result = await asyncio.wait_for(coordinator.run(), 120)
        assert await own.queue_depth(topology.updates) == 0
    return result, await drain(BROKER_URL, topology.rejected)


def config_of(federation: str, state: Path, **extra: Any) -> CoordinatorConfig:
    return CoordinatorConfig(
        federation=federation, participants=3, rounds=1, state_dir=state, linger_seconds=0,
        dead_letter_bytes=BOUND, **extra,
    )  # fmt: skip


async def test_a_flood_fills_the_dead_letter_queue_to_its_bound_and_the_first_evidence_stays(
    tmp_path: Path, federation: str, caplog: pytest.LogCaptureFixture
):
    """40 bad bodies of 401 bytes before the three honest updates, the DLQ bounded at
    4 KiB, no per-sender share: the DLQ holds exactly the first bodies that fit, the rest
    are acked, recorded and counted as queue_full, with one warning line; the version is
    the exact FedAvg."""
    config = config_of(federation, tmp_path, dead_letter_share=1.0)
    topology = Topology(federation, dead_letter_max_bytes=BOUND)
    flood = [(f"flood-{i:03d}", flood_body(i)) for i in range(FLOOD)]
    honest = [honest_update(federation, f"p{i}", i) for i in range(3)]
    observer, metrics = DropCounter(), PrometheusMetrics(federation)
    async with AmqpTransport(BROKER_URL) as admin:
        await topology.declare_core(admin)
        try:
            await publish(BROKER_URL, topology, [*flood, *honest])
            with caplog.at_level(logging.WARNING, "fedq.coordinator"):
                result, dead = await run_coordinator(config, topology, observer, metrics)
        finally:
            await topology.delete(admin, [])
    assert result.model_version == 1 and result.rejected_by_reason == {"undecodable": FLOOD}
    assert_exact_fedavg(tmp_path)
    kept = len(dead)
    assert kept == BOUND // BODY and sum(len(d.body) for d in dead) <= BOUND
    # The first evidence, byte for byte, in order: nothing of it was pushed out.
    assert [(d.message_id, bytes(d.body)) for d in dead] == flood[:kept]
    assert observer.dropped == {("undecodable", QUEUE_FULL): FLOOD - kept}
    labels = {"federation": federation, "reason": "undecodable", "cause": QUEUE_FULL}
    counted = metrics.registry.get_sample_value("fedq_dead_letter_dropped_total", labels)
    assert counted == FLOOD - kept
    details = UpdateLedger(tmp_path / "ledger.sqlite").rejections()
    missing = [
        r
        for r in details
        if r["detail"].startswith("no copy in the DLQ (the dead-letter queue is full")
    ]
    assert len(details) == FLOOD and len(missing) == FLOOD - kept
    warnings = [r for r in caplog.records if "not copied there" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


async def test_one_users_flood_takes_only_its_share_and_another_participants_evidence_stays(
    tmp_path: Path, federation: str
):
    """With --verify-identity, mallory (a broker user of its own) floods 40 bad bodies; at
    --dead-letter-share 0.25 of 4 KiB it gets two copies, the first two. Then p1 (its own
    user) sends one bad body: it gets its copy, which a DLQ filled by mallory would refuse.
    Every delivery is settled and the honest version is exact."""
    names = [f"p{i}-{federation}" for i in range(3)]
    attacker = f"mallory-{federation}"
    config = config_of(federation, tmp_path, verify_identity=True, dead_letter_share=0.25)
    topology = Topology(federation, dead_letter_max_bytes=BOUND)
    flood = [(f"flood-{i:03d}", flood_body(i)) for i in range(FLOOD)]
    p1_bad = ("p1-bad", b"\xc1 p1 sent this")
    observer = DropCounter()
    with broker_users([*names, attacker]) as users:
        url = {name: BROKER_URL.replace("guest:guest", f"{name}:{pw}") for name, pw in users}
        async with AmqpTransport(BROKER_URL) as admin:
            await topology.declare_core(admin)
            try:
                await publish(url[attacker], topology, flood)
                await publish(url[names[1]], topology, [p1_bad])
                for i, name in enumerate(names):
                    await publish(url[name], topology, [honest_update(federation, name, i)])
                result, dead = await run_coordinator(config, topology, observer)
            finally:
                await topology.delete(admin, [])
    assert result.model_version == 1
    assert result.rejected_by_reason == {"undecodable": FLOOD + 1}
    assert_exact_fedavg(tmp_path)
    share = int(0.25 * BOUND) // BODY
    assert [(d.message_id, bytes(d.body)) for d in dead] == [*flood[:share], p1_bad]
    assert observer.dropped == {("undecodable", SENDER_SHARE): FLOOD - share}


async def test_a_dead_letter_queue_left_without_the_bound_is_one_line_saying_what_to_do(
    tmp_path: Path, federation: str
):
    """An older fedq declared fedq.F.rejected without arguments, and it holds evidence:
    the coordinator never deletes it, and RabbitMQ cannot change it, so starting says
    which queue, why, and what to do, in one line (exit 2 from the CLI)."""
    topology = Topology(federation)
    async with AmqpTransport(BROKER_URL) as admin:
        await admin.declare_queue(topology.rejected)  # as fedq did before the bound
        await admin.publish("", topology.rejected, b"old evidence")
        try:
            config = config_of(federation, tmp_path)
            coordinator = Coordinator(config, SyntheticApp(params=PARAMS), admin)
            with pytest.raises(Inequivalent) as raised:
                await asyncio.wait_for(coordinator.run(), 30)
            message = str(raised.value)
            assert "\n" not in message and topology.rejected in message
            assert "delete_queue" in message and "x-overflow=reject-publish" in message
            result = await asyncio.to_thread(
                run_fedq, "coordinator", "--federation", federation, "--app",
                "fedq.apps.synthetic:app", "-n", "1", "-r", "1", "--state-dir",
                str(tmp_path / "cli"), "--broker", BROKER_URL, timeout=120,
            )  # fmt: skip
            assert result.returncode == 2, result.stdout + result.stderr
            assert "Traceback" not in result.stderr
            errors = [line for line in result.stderr.splitlines() if line.startswith("fedq:")]
            assert len(errors) == 1 and topology.rejected in errors[0], result.stderr
            assert await admin.queue_depth(topology.rejected) == 1  # the evidence is kept
        finally:
            await topology.delete(admin, [])


@dataclass
class Sent:
    """What the evidence reads of a delivery."""

    user_id: str | None
    message_id: str
    body: bytes
    type: str | None = MESSAGE_TYPES["update"]
    headers: dict[str, Any] = field(default_factory=dict)


REFUSAL = Outcome(None, "undecodable", "not msgpack")


async def test_the_share_starts_again_once_the_queue_is_emptied(
    federation: str, monkeypatch: pytest.MonkeyPatch
):
    """A user at its share (two copies of 401 bytes at 0.25 of 4 KiB) gets no copy until
    an operator empties the queue; then every tally starts again: two more, not three."""
    monkeypatch.setattr(evidence_module, "RECHECK_SECONDS", 0.0)
    config = config_of(federation, Path("unused"), verify_identity=True, dead_letter_share=0.25)
    topology = Topology(federation, dead_letter_max_bytes=BOUND)
    body = flood_body(0)

    async def keep(evidence: Evidence, n: int) -> list[str | None]:
        return [await evidence.keep(Sent("m", f"m{i}", body), body, REFUSAL) for i in range(n)]

    async with AmqpTransport(BROKER_URL) as own:
        await topology.declare_core(own)
        try:
            evidence = Evidence(config, own, topology, Observers())
            assert await keep(evidence, 3) == [None, None, SENDER_SHARE]
            assert await keep(evidence, 1) == [SENDER_SHARE]  # the queue is not empty
            assert len(await drain(BROKER_URL, topology.rejected)) == 2  # an operator read them
            assert await keep(evidence, 3) == [None, None, SENDER_SHARE]
        finally:
            await topology.delete(own, [])


async def test_copies_made_at_once_each_count_in_the_share(
    federation: str, monkeypatch: pytest.MonkeyPatch
):
    """The coordinator settles refusals several at once: six copies of one user's bodies
    started together get two copies (its share, 0.25 of 4 KiB), as six in turn would, not
    six that each looked at the share before any other was counted. Nor does an empty
    queue while the first two are still on their way read as an operator having emptied
    it (it is looked at for every copy refused here)."""
    monkeypatch.setattr(evidence_module, "RECHECK_SECONDS", 0.0)
    config = config_of(federation, Path("unused"), verify_identity=True, dead_letter_share=0.25)
    topology = Topology(federation, dead_letter_max_bytes=BOUND)
    body = flood_body(0)
    async with AmqpTransport(BROKER_URL) as own:
        await topology.declare_core(own)
        try:
            evidence = Evidence(config, own, topology, Observers())
            kept = await asyncio.gather(
                *(evidence.keep(Sent("m", f"m{i}", body), body, REFUSAL) for i in range(6))
            )
            assert kept == [None, None, *[SENDER_SHARE] * 4]
            assert [d.message_id for d in await drain(BROKER_URL, topology.rejected)] == [
                "m0",
                "m1",
            ]
        finally:
            await topology.delete(own, [])


async def test_what_the_share_remembers_is_bounded_whatever_users_send(federation: str):
    """Broker users beyond N + 64 (and messages without a user) share one tally: 500 users
    with a copy each leave at most N + 65 tallies (the queue has room for all 500)."""
    config = CoordinatorConfig(
        federation=federation, participants=2, rounds=1, state_dir=Path("unused"),
        verify_identity=True, dead_letter_bytes=64 << 20,
    )  # fmt: skip
    topology = Topology(federation, dead_letter_max_bytes=64 << 20)
    async with AmqpTransport(BROKER_URL) as own:
        await topology.declare_core(own)
        try:
            evidence = Evidence(config, own, topology, Observers())
            for i in range(500):
                sent = Sent(f"user-{i}", f"u{i}", b"\xc1")
                assert await evidence.keep(sent, sent.body, REFUSAL) is None
            assert len(evidence.held) == config.participants + SENDER_SLACK + 1
            assert await own.queue_depth(topology.rejected) == 500
        finally:
            await topology.delete(own, [])


def test_the_ledger_says_which_copies_are_missing_and_why():
    """A refusal whose body, or some of whose chunks, has no copy is recorded with why;
    one with every copy made is recorded as it was."""
    assert without_copy(REFUSAL, []) == REFUSAL
    full = "the dead-letter queue is full, at --dead-letter-bytes"
    assert without_copy(REFUSAL, [QUEUE_FULL]).detail == f"no copy in the DLQ ({full}): not msgpack"
    chunks = without_copy(REFUSAL, [SENDER_SHARE, QUEUE_FULL, QUEUE_FULL], 5)
    assert chunks.reason == "undecodable"
    assert chunks.detail.startswith(f"3 of 5 chunks not copied to the DLQ ({full}; its broker user")
