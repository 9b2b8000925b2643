"""Hostile input published straight to the updates exchange while a real federation runs:
the coordinator and three honest participants as `fedq` processes, each participant
logged in as its own broker user, the coordinator verifying identities and bounding the
update norm. An attacker with a broker user of its own publishes every hand-written case,
hypothesis-generated documents and a flood of large garbage bodies; with an honest
update it captured (a queue bound to the updates exchange), it also replays it, alters
it and claims its owner's identity, and its owner's stolen credentials replay it 200 times.

Then: each hostile message is in the dead-letter queue, byte for byte, with its reason
(replays are counted as duplicates instead), the honest rounds all closed and are exactly
FedAvg of the honest updates, nothing confirmed was lost, and the coordinator's peak RSS
stayed far below what holding the flood would take.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

from fedq.apps.synthetic import SyntheticApp
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import Weights, decode_message
from fedq.messages.schema import MESSAGE_TYPES, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology
from tests.broker_users import broker_users
from tests.fault_table import FaultRow, record
from tests.faults.harness import PARAMS, FaultyFederation
from tests.helpers import drain, until, until_async
from tests.hostile.cases import (
    NORM_BOUND,
    captured_cases,
    crafted_cases,
    hostile_documents,
    norm_outlier,
)

pytestmark = [pytest.mark.broker, pytest.mark.processes]

GENERATED = 150
GARBAGE_BODIES = 300
GARBAGE_BYTES = 1_200_000  # under the intake's size limit: each is read and refused
REPLAYS = 200
#: Well-formed updates (norm outliers, distinct ids) from the attacker on the open version:
#: past --max-updates-per-participant (4) in a version they are refused rate_limited.
WELL_FORMED_FLOOD = 40
#: Room in the DLQ for every hostile body (the default, 256 MiB, is less than the flood).
DEAD_LETTER_BYTES = 1 << 30
#: Seconds each honest participant adds to a round.
DELAY = 2.0
#: The coordinator's peak RSS must stay under this. Holding the flood alone would take
#: GARBAGE_BODIES x GARBAGE_BYTES = 343 MiB on top of its ~75. Measured here: 104 MiB; 195
#: while each refusal kept its traceback, and the body with it, until the garbage collector
#: came (see Rejection.bare).
RSS_BOUND_MIB = 160


def generated_documents(federation: str, model: Weights, attacker: str) -> list[bytes]:
    """GENERATED distinct hypothesis documents, the same ones every run (derandomized)."""
    found: dict[bytes, None] = {}

    @settings(
        max_examples=GENERATED, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(hostile_documents(federation, model, attacker))
    def collect(body: bytes) -> None:
        found[body] = None

    collect()
    return list(found)


async def capture_honest_update(url: str, spy: str) -> bytes:
    """The first honest update on model v0 that the spy queue copied."""
    async with AmqpTransport(url) as transport, transport.consume(spy, prefetch=10) as inbox:
        async for delivery in inbox:
            await delivery.ack()
            meta = decode_message(delivery.body).meta(UpdateMeta)
            if meta.base_version == 0:
                return bytes(delivery.body)
    raise AssertionError("the spy queue closed")


async def publish_all(url: str, exchange: str, messages: list[tuple[str, bytes]]) -> None:
    async with AmqpTransport(url) as transport:
        for message_id, body in messages:
            await transport.publish(
                exchange, UPDATE_KEY, body, message_id=message_id,
                type=MESSAGE_TYPES["update"], mandatory=True,
            )  # fmt: skip


async def pause_with_a_version_open(
    fed: FaultyFederation, participants: list[subprocess.Popen[bytes]], spy: str
) -> int:
    """SIGSTOP the honest participants; the committed version, the next one left open.

    The next commit needs an update from each of them on the committed model: if all had
    sent theirs before they stopped (the spy queue copied every update published), that
    version is committed first, and none can follow it while they are stopped."""
    for participant in participants:
        participant.send_signal(signal.SIGSTOP)
    sent: Counter[int] = Counter()  # honest updates published, by base version
    while True:
        version = fed.committed_version()
        for delivery in await drain(fed.broker, spy, quiet=0.5):
            sent[decode_message(delivery.body).meta(UpdateMeta).base_version] += 1
        if sent[version] < fed.participants:
            return version
        await until_async(
            lambda: asyncio.to_thread(fed.committed_version),
            lambda v: v > version,  # noqa: B023 (called within this iteration)
            what=f"v{version + 1}, whose updates were all sent, committed",
        )


def test_hostile_input_during_a_real_run(tmp_path, federation):
    topology = Topology(federation, dead_letter_max_bytes=DEAD_LETTER_BYTES)
    tag = uuid.uuid4().hex[:6]
    model = SyntheticApp(params=PARAMS).initial_weights()
    with broker_users([f"h{tag}-{i}" for i in range(3)] + [f"mallory-{tag}"]) as users:
        honest, attacker = users[:3], users[3]
        fed = FaultyFederation(
            tmp_path,
            federation,
            rounds=12,
            users=honest,
            # Every hostile body is kept (360 MB of garbage from one user): the DLQ's bound
            # and the per-user share are test_dead_letter_bound.py's.
            coordinator_args=[
                "--verify-identity",
                "--max-update-norm",
                str(NORM_BOUND),
                "--dead-letter-bytes",
                str(DEAD_LETTER_BYTES),
                "--dead-letter-share",
                "1",
            ],
            participant_args=["--delay", str(DELAY)],
        )
        spy = f"{topology.updates}.spy-{tag}"

        async def declare_spy() -> None:
            async with AmqpTransport(fed.broker) as transport:
                await topology.declare_core(transport)
                await transport.declare_queue(spy, durable=False)
                await transport.bind(spy, topology.updates, UPDATE_KEY)

        asyncio.run(declare_spy())
        try:
            coordinator = fed.start_coordinator("coordinator")
            participants = [fed.start_participant(i) for i in range(fed.participants)]
            captured = asyncio.run(asyncio.wait_for(capture_honest_update(fed.broker, spy), 120))
            owner = decode_message(captured).meta(UpdateMeta)
            # v1 committed: base v0 is stale from now on.
            until(fed.committed_version, lambda v: v >= 1, what="v1 committed", within=120)
            generated = generated_documents(federation, model, attacker[0])
            garbage = [b"\xc1" + os.urandom(GARBAGE_BYTES) for _ in range(GARBAGE_BODIES)]
            # The cases aimed at the open version must reach it while it is open, however
            # slow the machine: the honest participants are paused until all are refused.
            version = asyncio.run(pause_with_a_version_open(fed, participants, spy))
            cases = crafted_cases(federation, model, attacker[0], version)
            cases += captured_cases(captured)
            by_attacker = [
                (f"case-{i}", c.body) for i, c in enumerate(cases) if c.sender == "attacker"
            ]
            by_owner = [(f"case-{i}", c.body) for i, c in enumerate(cases) if c.sender == "owner"]
            by_owner += [(f"replay-{i}", captured) for i in range(REPLAYS)]
            outliers = [
                norm_outlier(federation, model, attacker[0], version)
                for _ in range(WELL_FORMED_FLOOD)
            ]
            by_attacker += [(f"outlier-{i}", b) for i, b in enumerate(outliers)]
            by_attacker += [(f"generated-{i}", b) for i, b in enumerate(generated)]
            by_attacker += [(f"garbage-{i}", b) for i, b in enumerate(garbage)]
            owner_user = honest[[u for u, _ in honest].index(owner.participant)]
            attacker_fed = FaultyFederation(tmp_path, federation, users=[attacker])
            owner_fed = FaultyFederation(tmp_path, federation, users=[owner_user])
            rejected_before = fed.ledger_value("SELECT count(*) FROM rejections")

            async def attack() -> None:
                await asyncio.gather(
                    publish_all(attacker_fed.participant_url(0), topology.updates, by_attacker),
                    publish_all(owner_fed.participant_url(0), topology.updates, by_owner),
                )

            asyncio.run(attack())
            published = len(by_attacker) + len(by_owner)
            until(
                lambda: fed.ledger_value("SELECT count(*) FROM rejections"),
                lambda refused: refused >= rejected_before + published,
                what=f"the {published} hostile messages refused",
                within=300,
                every=0.2,
            )
            # Taken in while the version they aimed at was open, the run not over.
            assert fed.committed_version() == version < fed.rounds, fed.logs()
            for participant in participants:
                participant.send_signal(signal.SIGCONT)

            assert fed.wait_coordinator(coordinator) == 0, fed.logs()
            for participant in participants:
                assert participant.wait(timeout=120) == 0, fed.logs()
            accounting = fed.account()
            assert accounting.versions == fed.rounds, fed.logs()
            assert accounting.lost == [] and accounting.applied_twice == []

            dead = {d.message_id: d for d in accounting.dead_letters}
            reason = {k: str(d.headers["x-fedq-reason"]).split(":")[0] for k, d in dead.items()}
            for i, case in enumerate(cases):
                if case.reason == "duplicate":
                    assert f"case-{i}" not in dead, case.kind
                else:
                    assert reason.get(f"case-{i}") == case.reason, case.kind
                    assert bytes(dead[f"case-{i}"].body) == case.body, case.kind
            for message_id, body in by_attacker:
                if message_id.startswith(("generated-", "garbage-")):
                    assert bytes(dead[message_id].body) == body
                    assert reason[message_id] != "duplicate"
            assert all(reason[f"garbage-{i}"] == "undecodable" for i in range(GARBAGE_BODIES))
            flood_reasons = Counter(reason[f"outlier-{i}"] for i in range(WELL_FORMED_FLOOD))
            assert set(flood_reasons) <= {"norm_exceeded", "rate_limited"}
            assert flood_reasons["rate_limited"] >= WELL_FORMED_FLOOD // 2
            duplicates = fed.ledger_value(
                "SELECT count(*) FROM rejections WHERE reason = 'duplicate' "
                f"AND update_id = '{owner.update_id}'"
            )
            assert duplicates == 1 + REPLAYS  # each replay counted, none applied
            assert fed.peak_rss_mib < RSS_BOUND_MIB

            generated_reasons = Counter(reason[f"generated-{i}"] for i in range(len(generated)))
            rows = [(c.kind, 1) for c in cases] + [
                (f"hypothesis documents ({len(generated_reasons)} reasons)", len(generated)),
                (f"flood: {GARBAGE_BYTES / 1e6:.1f} MB garbage bodies", GARBAGE_BODIES),
                ("flood: well-formed updates from one user", WELL_FORMED_FLOOD),
                ("flood: replays with stolen credentials", REPLAYS),
            ]
            for kind, tried in rows:
                record(
                    FaultRow(
                        kind=f"hostile: {kind}",
                        tried=tried,
                        lost=len(accounting.lost),
                        applied_twice=len(accounting.applied_twice),
                        coordinator_crashes=fed.crashes,
                        peak_rss_mib=fed.peak_rss_mib,
                    )
                )
        finally:
            fed.close()

            async def drop_spy() -> None:
                async with AmqpTransport(fed.broker) as transport:
                    await transport.delete_queue(spy)

            asyncio.run(drop_spy())
