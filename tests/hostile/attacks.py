"""The attacks of issue 21, one entry each, for `bench/hostile.py` and the restart test.

An attack is what one participant holding its own broker credentials publishes against a
running federation: a name, the class of issue 21 it belongs to, and a coroutine that
publishes it and says what it sent. Adding an attack is adding one entry to ``ATTACKS``.

What must stay true of every entry: it publishes only as the attacker's own broker user
(``Target.url``), on the routing keys a participant may use; it returns every message id
the coordinator must dead-letter (``Sent.dead_lettered``), so that the DLQ can be checked
for the evidence. Bodies come from ``tests/hostile/cases.py`` where it has them.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.messages.amqp import AmqpTransport
from fedq.messages.chunks import encode_chunks
from fedq.messages.codec import Weights, encode_message
from fedq.messages.schema import MESSAGE_TYPES, Heartbeat, Join, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology, participant_key
from tests.hostile.cases import (
    ID_PATTERN,
    METRIC_PATTERN,
    NORM_BOUND,
    HostileCase,
    _update_doc,
    bounds_cases,
    crafted_cases,
    norm_outlier,
    pack,
)
from tests.hostile.raw_frames import publish_tampered, tamperings

#: What a valid update from the attacker claims in the class 3 attack: the schema's
#: largest integer (2**53 - 1). Its delta (every value) is inside NORM_BOUND.
CLAIMED_EXAMPLES = 2**53 - 1
CLAIMED_DELTA = 0.01
#: --max-weight-share's default: the heaviest update is folded with at most
#: SHARE / (1 - SHARE) times the others' weight.
SHARE = 0.75


@dataclass(frozen=True)
class Target:
    """The federation under attack, as the attacker sees it."""

    federation: str
    #: The attacker's own broker URL (its user is ``attacker``).
    url: str
    attacker: str
    #: The federation's model (for shapes): fedq.apps.synthetic's.
    model: Weights
    #: The current model version: updates on it are admitted by the mode.
    version: int
    #: The coordinator's --chunk-bytes (the model is chunked at it).
    chunk_bytes: int
    #: Multiplies the size of every flood (1: the bench's default).
    scale: float = 1.0
    #: How long the stream keep-alive attack re-sends its chunks, at most: it stops
    #: earlier once ``stop`` is set (the restart test ends it when the others are done).
    keepalive_seconds: float = 6.0
    stop: asyncio.Event | None = None

    def count(self, base: int) -> int:
        return max(1, round(base * self.scale))


@dataclass
class Sent:
    """What an attack published."""

    messages: int = 0
    bytes: int = 0
    #: Message ids the coordinator must dead-letter (each at least once).
    dead_lettered: set[str] = field(default_factory=set)


Publish = Callable[[Target], Coroutine[Any, Any, Sent]]


@dataclass(frozen=True)
class Attack:
    #: Short, for --attacks and the table.
    name: str
    #: The class of issue 21: "1" ... "6" (with a letter for 4's parts), or "intake" for
    #: the body checks that came before it.
    klass: str
    publish: Publish
    #: The coordinator's --max-update-norm in this attack's run (None: no bound, so that
    #: the defence the attack is aimed at, not the norm check, meets it).
    norm_bound: float | None = NORM_BOUND
    #: An update the documented defence admits with a bounded weight (class 3):
    #: (every value of its delta, the num_examples it claims).
    admitted: tuple[float, int] | None = None


class Publisher:
    """The attacker's connection: publishes and counts what it sent."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.topology = Topology(target.federation)
        self.transport = AmqpTransport(target.url)
        self.sent = Sent()

    async def __aenter__(self) -> Publisher:
        await self.transport.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()

    async def update(self, message_id: str, body: bytes, *, dead: bool = True) -> None:
        await self.transport.publish(
            self.topology.updates, UPDATE_KEY, body, message_id=message_id,
            type=MESSAGE_TYPES["update"], mandatory=True,
        )  # fmt: skip
        self._count(body)
        if dead:
            self.sent.dead_lettered.add(message_id)

    async def control(self, event: Join | Heartbeat, routing_participant: str) -> None:
        body = encode_message(event)
        key = f"{event.kind}.{routing_participant}"
        await self.transport.publish(
            self.topology.control, key, body, type=MESSAGE_TYPES[event.kind]
        )
        self._count(body)

    def _count(self, body: bytes) -> None:
        self.sent.messages += 1
        self.sent.bytes += len(body)


async def _cases(target: Target, make: Callable[[], list[HostileCase]], prefix: str) -> Sent:
    """``make``'s cases, made afresh (new update ids) ``target.count(10)`` times: enough
    messages that what the coordinator spends on them stands out of its run's noise."""
    async with Publisher(target) as out:
        for r in range(target.count(10)):
            for i, case in enumerate(make()):
                dead = case.reason != "duplicate"
                await out.update(f"{prefix}-{r}-{i}", case.body, dead=dead)
        return out.sent


def _current(target: Target) -> dict[str, int]:
    return {"round": target.version + 1, "base_version": target.version}


async def crafted(target: Target) -> Sent:
    """Every hand-written body case of tests/hostile/cases.py (the bounds ones have
    entries of their own)."""
    bounds = {c.kind for c in bounds_cases(target.federation, target.model)}

    def make() -> list[HostileCase]:
        cases = crafted_cases(target.federation, target.model, target.attacker, target.version)
        return [c for c in cases if c.kind not in bounds]

    return await _cases(target, make, "crafted")


def _is_text_case(case: HostileCase) -> bool:
    header = case.header or ""
    return ID_PATTERN in header or METRIC_PATTERN in header or "at most 32 metrics" in header


def _bounds(target: Target, *, text: bool) -> list[HostileCase]:
    cases = bounds_cases(target.federation, target.model, target.attacker, target.version)
    return [c for c in cases if _is_text_case(c) == text]


async def numbers(target: Target) -> Sent:
    """Class 2: integers beyond what the ledger stores, floats that are not finite."""
    return await _cases(target, lambda: _bounds(target, text=False), "numbers")


async def untrusted_text(target: Target) -> Sent:
    """Class 6: ids and metric names with markup and terminal escapes, 50,000 metrics."""
    return await _cases(target, lambda: _bounds(target, text=True), "text")


async def bad_update_flood(target: Target) -> Sent:
    """Garbage bodies of 1 MB (under --max-update-bytes, so each is read and refused) and
    well-formed updates far outside the norm bound, each with a new id."""
    async with Publisher(target) as out:
        for i in range(target.count(40)):  # first: on the open version
            body = norm_outlier(target.federation, target.model, target.attacker, target.version)
            await out.update(f"outlier-{i}", body)
        garbage = b"\xc1" + os.urandom(1_000_000)
        for i in range(target.count(100)):
            await out.update(f"garbage-{i}", garbage[:1] + os.urandom(16) + garbage[17:])
        return out.sent


def _update(target: Target, value: float, num_examples: int) -> tuple[str, bytes]:
    update_id = f"hostile-{uuid.uuid4().hex[:12]}"
    doc = _update_doc(
        target.federation, target.model, value, target.attacker,
        update_id=update_id, num_examples=num_examples, **_current(target),
    )  # fmt: skip
    return update_id, pack(doc)


async def overflow(target: Target) -> Sent:
    """Class 2: finite float32 values (3e38) whose weighted sum overflows, each with a new
    id (past --max-updates-per-participant in a version they are rate_limited)."""
    async with Publisher(target) as out:
        for i in range(target.count(20)):
            _, body = _update(target, 3e38, 1000)
            await out.update(f"overflow-{i}", body)
        return out.sent


async def huge_weight(target: Target) -> Sent:
    """Class 3: a valid update inside the norm bound claiming 2**53 - 1 examples. The
    documented result: folded with at most SHARE of its version's weight. Sent again with
    new ids: one is admitted per version, the others refused (already_submitted,
    rate_limited)."""
    async with Publisher(target) as out:
        for i in range(target.count(20)):
            _, body = _update(target, CLAIMED_DELTA, CLAIMED_EXAMPLES)
            await out.update(f"weight-{i}", body, dead=False)  # the first admitted
        return out.sent


def _chunked(target: Target, chunk_bytes: int) -> list[bytes]:
    meta = UpdateMeta(
        federation=target.federation, participant=target.attacker,
        num_examples=10, update_id=str(uuid.uuid4()), **_current(target),
    )  # fmt: skip
    zeros = {k: np.zeros_like(v) for k, v in target.model.items()}
    return list(encode_chunks(meta, zeros, "raw", chunk_bytes))


async def streams_kept_open(target: Target) -> Sent:
    """Class 4a: the first chunk of many chunked updates (more than a sender's share of the
    stream slots), then the first two re-sent every 0.2 s for ``keepalive_seconds``,
    as if to keep their streams open (a copy is no progress: they expire anyway)."""
    async with Publisher(target) as out:
        firsts = [_chunked(target, target.chunk_bytes)[0] for _ in range(target.count(24))]
        for i, body in enumerate(firsts):
            await out.update(f"stream-{i}", body)
        until = time.monotonic() + target.keepalive_seconds
        while time.monotonic() < until and not (target.stop and target.stop.is_set()):
            for i, body in enumerate(firsts[:2]):
                await out.update(f"stream-{i}", body)  # the same message, again
            await asyncio.sleep(0.2)  # sleep-ok: paces the attacker's re-sends
        return out.sent


async def tiny_chunks(target: Target) -> Sent:
    """Class 4b: updates cut into chunks 64 times smaller than the model's chunk plan."""
    async with Publisher(target) as out:
        for u in range(target.count(4)):
            for i, body in enumerate(_chunked(target, max(1, target.chunk_bytes // 64))):
                await out.update(f"tiny-{u}-{i}", body)
        return out.sent


async def msgpack_bombs(target: Target) -> Sent:
    """Class 4c: a valid-looking update padded with 900,000 empty lists (0.9 MB on the
    wire, under --max-update-bytes' default, some 60 MB of Python objects if decoded
    without a budget), many times."""
    padding: list[Any] = [[] for _ in range(900_000)]
    update = _update_doc(target.federation, target.model, attacker=target.attacker)
    body = pack(update | _current(target) | {"padding": padding})
    async with Publisher(target) as out:
        for i in range(target.count(20)):
            await out.update(f"bomb-{i}", body)
        return out.sent


async def control_flood(target: Target) -> Sent:
    """Class 4e: joins and heartbeats under made-up ids (on their own routing keys, and on
    the attacker's own key with another id in the body)."""
    fed = target.federation
    async with Publisher(target) as out:
        ghosts = range(target.count(1000))
        for batch in (ghosts[at : at + 100] for at in range(0, len(ghosts), 100)):  # pipelined
            await asyncio.gather(*(
                out.control(event(federation=fed, participant=f"ghost-{i}"), key)
                for i in batch
                for event, key in ((Join, f"ghost-{i}"), (Heartbeat, f"ghost-{i}"),
                                   (Heartbeat, target.attacker))
            ))  # fmt: skip
        return out.sent


async def undecodable_properties(target: Target) -> Sent:
    """Class 1: messages whose properties the AMQP client cannot decode (a message_id, type
    or header name not UTF-8, a header table nested 3000 deep, a timestamp past any
    date), on the updates exchange and on the attacker's own heartbeat key. Each once took
    the coordinator's connection down, forever. Their ids cannot be decoded, so none is
    listed for the DLQ check; that they were settled is (nothing is left on the broker)."""
    topology = Topology(target.federation)
    sent = Sent()
    for r in range(target.count(5)):
        for kind in tamperings(target.attacker):
            body = f"tampered {r} {kind.name}".encode()
            await publish_tampered(target.url, topology.updates, UPDATE_KEY, body, kind)
            key = participant_key("heartbeat", target.attacker)
            await publish_tampered(target.url, topology.control, key, body, kind)
            sent.messages += 2
            sent.bytes += 2 * len(body)
    return sent


ATTACKS: list[Attack] = [
    # Class 1, frames the AMQP client cannot parse: message properties that are not valid
    # UTF-8, published with raw AMQP frames. Another change adds it here, as one entry:
    Attack("undecodable-properties", "1", undecodable_properties),
    Attack("crafted", "intake", crafted),
    Attack("bad-updates", "intake", bad_update_flood),
    Attack("numbers", "2", numbers),
    Attack("overflow", "2", overflow, norm_bound=None),
    Attack("weight", "3", huge_weight, admitted=(CLAIMED_DELTA, CLAIMED_EXAMPLES)),
    Attack("streams-kept-open", "4a", streams_kept_open),
    Attack("tiny-chunks", "4b", tiny_chunks),
    Attack("msgpack-bombs", "4c", msgpack_bombs),
    Attack("control-flood", "4e", control_flood),
    Attack("text", "6", untrusted_text),
]
BY_NAME = {a.name: a for a in ATTACKS}


@dataclass(frozen=True)
class Versions:
    """What the federation committed, checked against the honest updates."""

    committed: int
    #: Versions whose model is not what their updates make (FedAvg, the attacker's
    #: admitted update at its capped weight).
    wrong: list[int]
    #: Versions that took the attacker's update.
    with_attacker: list[int]


def expected_step(
    contributors: list[tuple[str, int]], honest: list[str], attack: Attack | None
) -> float | None:
    """What a version of ``contributors`` (participant, num_examples) adds to every value
    of fedq.apps.synthetic's model: FedAvg, the heaviest update capped at SHARE of the
    version (docs/wire-protocol.md). None when it holds an update no rule admits."""
    weights, values = [], []
    for participant, num_examples in contributors:
        if participant in honest:
            index = honest.index(participant)
            weights.append(float(SyntheticApp.num_examples(index)))
            values.append(SyntheticApp.delta_value(index))
        elif attack is not None and attack.admitted is not None:
            weights.append(float(num_examples))
            values.append(attack.admitted[0])
        else:
            return None
    heaviest = int(np.argmax(weights))
    others = math.fsum(w for i, w in enumerate(weights) if i != heaviest)  # not a difference:
    # a claim near 2**53 would round the others away
    weights[heaviest] = min(weights[heaviest], SHARE / (1 - SHARE) * others)
    return sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)


def check_versions(state: Path, honest: list[str], attack: Attack | None) -> Versions:
    """Every committed version of the federation in ``state`` against its ledger's
    updates: exact to float32 rounding (the synthetic app's deltas are known)."""
    with sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True) as db:
        committed = int(db.execute("SELECT max(version) FROM versions").fetchone()[0] or 0)
        rows = db.execute("SELECT version, participant, num_examples FROM updates").fetchall()
    wrong, with_attacker = [], []
    models = state / "models"
    for version in range(1, committed + 1):
        contributors = [(p, n) for v, p, n in rows if v == version]
        if any(p not in honest for p, _ in contributors):
            with_attacker.append(version)
        step = expected_step(contributors, honest, attack)
        before = load_checkpoint(checkpoint_path(models, version - 1))
        after = load_checkpoint(checkpoint_path(models, version))
        if step is None or not all(
            np.allclose(after[k] - before[k], step, rtol=1e-4) for k in after
        ):
            wrong.append(version)
    return Versions(committed, wrong, with_attacker)
