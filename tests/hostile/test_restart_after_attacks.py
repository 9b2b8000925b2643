"""Issue 21, "Done when" 3: a coordinator restarted after the attacks meets nothing
poisonous on the broker, because every bad message was settled.

A federation of real `fedq` processes on RabbitMQ (tests/faults/harness.py): the
coordinator with --verify-identity and three honest participants, each its own broker
user, and an attacker with a broker user of its own that publishes every attack of
tests/hostile/attacks.py at once, right after a commit. Then a marker (an update refused
as stale, with an id of its own) is published: the updates queue is consumed in order, so
once the ledger records the marker, the coordinator has taken every attacker message
before it. The coordinator is stopped with SIGTERM (nothing it holds unacked is lost: the
broker returns it to the queue), and the queues are read:

- the updates queue and the coordinator's control queue hold no message from the attacker
  (one left unacked by a defence, or held open by it, would be back there now);
- a coordinator restarted on the same state dir completes the federation, each version
  exactly the FedAvg of its honest updates;
- the DLQ holds the evidence: every message the attacker sent that must be refused, each
  exactly once (a restarted coordinator that met one again would refuse it again).

The one attack left out is class 3's: its update is well-formed and admitted (at its
capped weight), so until its version commits it is held like an honest one and rightly
taken again by a restarted coordinator; tests/hostile/test_weights.py covers it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.messages.amqp import AmqpTransport
from fedq.messages.topology import Topology
from fedq.messages.transport import Delivery
from tests.broker_users import broker_users
from tests.faults.harness import CHUNK, PARAMS, FaultyFederation
from tests.helpers import drain, wait_with_peak_rss
from tests.hostile.attacks import (
    ATTACKS,
    BY_NAME,
    Publisher,
    Sent,
    Target,
    check_versions,
)
from tests.hostile.cases import NORM_BOUND, _update_doc, pack

pytestmark = pytest.mark.broker

ROUNDS = 3
#: Seconds each honest participant adds to a round: the version the attacks land in stays
#: open past all of them and the SIGTERM.
DELAY = 15.0
#: The streams attack re-sends its chunks while the others are published and for longer
#: than CHUNK_TIMEOUT: its streams expire while it re-sends (a copy is no progress), and
#: the SIGTERM comes right after it, before a stream whose clock a copy had reset would
#: have expired.
CHUNK_TIMEOUT = 5.0  # the margin for the SIGTERM after the streams attack stops
#: Floods at a tenth of the bench's size.
SCALE = 0.1
#: Class 3's update is admitted, not refused (see above).
OTHER_ATTACKS = [a for a in ATTACKS if a.admitted is None and a.name != "streams-kept-open"]


def wait_until(
    condition: Callable[[], bool], timeout: float, fed: FaultyFederation, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} in {timeout} s\n{fed.logs()}"
        time.sleep(0.05)


async def attack(fed: FaultyFederation, user: tuple[str, str]) -> Sent:
    """Right after a commit, the streams attack starts re-sending its chunks, and every
    other attack is published beside it (each aimed at the version current when it
    starts); the streams attack stops once they are done and its streams are older than
    CHUNK_TIMEOUT. Returns everything sent."""
    stop = asyncio.Event()
    target = Target(
        federation=fed.name, url=url_of(fed, user), attacker=user[0],
        model=SyntheticApp(params=PARAMS).initial_weights(), version=fed.committed_version(),
        chunk_bytes=CHUNK, scale=SCALE, keepalive_seconds=120, stop=stop,
    )  # fmt: skip
    started = time.monotonic()
    streams = asyncio.create_task(BY_NAME["streams-kept-open"].publish(target))
    sent = Sent()
    for one in OTHER_ATTACKS:
        part = await one.publish(replace(target, version=fed.committed_version()))
        sent.messages += part.messages
        sent.dead_lettered |= part.dead_lettered
    # The attacker's pace, not a wait for the coordinator: keep the streams "alive" past
    # their timeout, then stop (a stream a copy kept open would now be held for
    # CHUNK_TIMEOUT more).
    await asyncio.sleep(max(0.0, started + 1.5 * CHUNK_TIMEOUT - time.monotonic()))
    stop.set()
    part = await streams
    sent.messages += part.messages
    sent.dead_lettered |= part.dead_lettered
    return sent


async def publish_marker(fed: FaultyFederation, user: tuple[str, str], update_id: str) -> None:
    doc = _update_doc(fed.name, SyntheticApp(params=PARAMS).initial_weights(),
                      attacker=user[0], update_id=update_id, round=1, base_version=0)  # fmt: skip
    target = Target(fed.name, url_of(fed, user), user[0], {}, 0, CHUNK)
    async with Publisher(target) as out:
        await out.update(update_id, pack(doc))


def url_of(fed: FaultyFederation, user: tuple[str, str]) -> str:
    return replace(fed, users=[user]).participant_url(0)


async def peek(url: str, queue: str, quiet: float = 1.0) -> list[Delivery]:
    """Every message now in ``queue``, left there: none is acked, so closing the channel
    returns them all."""
    out: list[Delivery] = []
    async with AmqpTransport(url) as transport, transport.consume(queue, prefetch=1000) as inbox:
        while True:
            try:
                out.append(await asyncio.wait_for(anext(inbox), quiet))
            except TimeoutError:
                return out


def settled(queue: str) -> bool:
    """Whether ``queue`` holds nothing, ready or unacked: live counts (``rabbitmqctl``),
    where the management API's lag by its statistics interval."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_ready",
         "messages_unacknowledged", "--formatter", "json"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [r for r in json.loads(out or "[]") if r["name"] == queue]
    return bool(rows) and rows[0]["messages_ready"] == rows[0]["messages_unacknowledged"] == 0


def test_a_restarted_coordinator_meets_nothing_the_attacker_sent(tmp_path, federation):
    topology = Topology(federation)
    tag = uuid.uuid4().hex[:6]
    marker = f"marker-{tag}"
    with broker_users([f"h{tag}-{i}" for i in range(3)] + [f"mallory-{tag}"]) as users:
        honest, attacker = users[:3], users[3]
        fed = FaultyFederation(
            tmp_path, federation, rounds=ROUNDS, users=honest,
            coordinator_args=[
                "--verify-identity", "--max-update-norm", str(NORM_BOUND),
                "--chunk-bytes", str(CHUNK), "--chunk-timeout", str(CHUNK_TIMEOUT),
            ],
            participant_args=["--delay", str(DELAY)],
        )  # fmt: skip
        try:
            first = fed.start_coordinator("coordinator")
            participants = [fed.start_participant(i) for i in range(fed.participants)]
            wait_until(lambda: fed.committed_version() >= 1, 120, fed, "version 1")
            sent = asyncio.run(attack(fed, attacker))
            asyncio.run(publish_marker(fed, attacker, marker))
            recorded = f"SELECT count(*) FROM rejections WHERE update_id = '{marker}'"
            wait_until(  # else it is stuck on what it holds: its prefetch full of unacked ones
                lambda: fed.ledger_value(recorded) == 1, 60, fed, "marker refused (stuck?)"
            )

            # Nothing ready is not enough: up to CONTROL_IN_FLIGHT events sit in the
            # coordinator's prefetch, unacked, and a SIGTERM would return them.
            wait_until(lambda: settled(topology.coordinator), 60, fed, "control settled")
            assert fed.committed_version() < ROUNDS, "the attacks came after the run"
            first.send_signal(signal.SIGTERM)
            code, _ = wait_with_peak_rss(first, 60)
            assert code == 143, fed.logs()  # stopped by SIGTERM: "uncommitted updates stay"

            left = [
                d
                for queue in (topology.updates, topology.coordinator)
                for d in asyncio.run(peek(fed.broker, queue))
            ]
            # Only the honest users' messages (held updates, heartbeats) may be there: not the
            # attacker's, nor any without a verified user.
            names = {name for name, _ in honest}
            not_honest = [d.message_id or d.routing_key for d in left if d.user_id not in names]
            assert not_honest == [], f"{len(not_honest)} left: {not_honest[:10]}"

            fed.start_coordinator("coordinator-2")
            assert fed.wait_coordinator(fed.processes[-1]) == 0, fed.logs()
            for participant in participants:
                assert participant.wait(timeout=120) == 0, fed.logs()
            versions = check_versions(fed.state, [u for u, _ in honest], None)
            assert (versions.committed, versions.wrong, versions.with_attacker) == (
                ROUNDS,
                [],
                [],
            ), fed.logs()

            dead = asyncio.run(drain(fed.broker, topology.rejected))
            times = Counter(d.message_id for d in dead if d.message_id in sent.dead_lettered)
            assert sent.dead_lettered <= set(times), sent.dead_lettered - set(times)
            twice = [m for m, n in times.items() if n > 1 and not str(m).startswith("stream-")]
            assert twice == [], f"refused again after the restart: {twice[:10]}"
        finally:
            fed.close()
