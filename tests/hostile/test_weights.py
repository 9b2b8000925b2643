"""Self-reported weights and overflow, against a coordinator on the real RabbitMQ.

An update's FedAvg weight is the ``num_examples`` its sender claims. One participant that
claims a billion examples, inside the norm bound, must not become the whole step: the
heaviest update of a version is capped at ``--max-weight-share`` of it (0.75 by default).
And finite float32 values whose weighted sum overflows must not commit a model of
infinities: the update whose fold would overflow is refused (``overflow``), the version is
made of the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.chunks import encode_chunks
from fedq.messages.codec import Weights, encode_message
from fedq.messages.schema import MESSAGE_TYPES, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology
from tests.conftest import BROKER_URL
from tests.helpers import drain

pytestmark = pytest.mark.broker

PARAMS = 100_000  # 400 kB of float32: 7 chunks of at most 64 KiB when chunked
CHUNK = 1 << 16
HONEST = 3
#: int64's range, so the claim passes any schema bound on integers.
CLAIMED = 10**12
NORM_BOUND = 10.0
#: --max-weight-share's default.
SHARE = 0.75


def model() -> Weights:
    return SyntheticApp(params=PARAMS).initial_weights()


def deltas(seed: int, scale: float) -> Weights:
    rng = np.random.default_rng(seed)
    return {
        name: (rng.standard_normal(w.shape) * scale).astype(np.float32)
        for name, w in model().items()
    }


def update(federation: str, participant: str, num_examples: int, delta: Weights) -> bytes:
    meta = UpdateMeta(
        federation=federation,
        participant=participant,
        round=1,
        base_version=0,
        num_examples=num_examples,
        update_id=f"u-{participant}",
    )
    return encode_message(meta, delta)


async def run_one_version(
    tmp_path: Path,
    federation: str,
    participants: int,
    bodies: list[tuple[str, bytes]],
    app: SyntheticApp | None = None,
    **extra: Any,
) -> tuple[Weights, dict[str, int], list[tuple[str, bytes]]]:
    """Publish ``bodies`` first, then run a coordinator for one version of ``participants``:
    the committed model v1, the refusals by reason, and the dead letters (reason, body)."""
    topology = Topology(federation)
    config = CoordinatorConfig(
        federation=federation,
        participants=participants,
        rounds=1,
        state_dir=tmp_path,
        round_timeout=600,
        linger_seconds=0,
        chunk_bytes=CHUNK,
        **extra,
    )
    async with AmqpTransport(BROKER_URL) as sender, AmqpTransport(BROKER_URL) as own:
        await topology.declare_core(sender)
        try:
            for message_id, body in bodies:
                await sender.publish(
                    topology.updates, UPDATE_KEY, body, message_id=message_id,
                    type=MESSAGE_TYPES["update"], mandatory=True,
                )  # fmt: skip
            coordinator = Coordinator(config, app or SyntheticApp(params=PARAMS), own)
            result = await asyncio.wait_for(coordinator.run(), 120)
            assert result.model_version == 1
            assert await sender.queue_depth(topology.updates) == 0
            dead = [
                (str(d.headers["x-fedq-reason"]).split(":")[0], bytes(d.body))
                for d in await drain(BROKER_URL, topology.rejected)
            ]
            committed = load_checkpoint(checkpoint_path(tmp_path / "models", 1))
            return committed, result.rejected_by_reason, dead
        finally:
            await topology.delete(sender, [])


def honest_updates(federation: str) -> tuple[list[tuple[str, bytes]], list[int], list[Weights]]:
    weights = [SyntheticApp.num_examples(i) for i in range(HONEST)]
    honest = [deltas(i, 0.01) for i in range(HONEST)]
    bodies = [
        (f"u-p{i}", update(federation, f"p{i}", weights[i], honest[i])) for i in range(HONEST)
    ]
    return bodies, weights, honest


def weighted_mean(weights: Sequence[float], updates: list[Weights]) -> dict[str, np.ndarray]:
    """In float64: the committed model is compared with it to float32 rounding."""
    total = sum(weights)
    mean: dict[str, np.ndarray] = {}
    for name in updates[0]:
        summed = np.zeros(updates[0][name].shape, np.float64)
        for w, u in zip(weights, updates, strict=True):
            summed += w * u[name].astype(np.float64)
        mean[name] = summed / total
    return mean


async def test_a_claimed_billion_examples_is_capped_at_its_share_of_the_version(
    tmp_path: Path, federation: str
):
    """Three honest updates (100, 200 and 300 examples) and one claiming 10^12, its delta
    inside --max-update-norm. The heaviest is folded with at most share / (1 - share)
    times the others' weight: 3 x 600 at the default share of 0.75. The committed model is
    that mean, not the attacker's delta (which it would be, to 1e-9, without the cap)."""
    bodies, weights, honest = honest_updates(federation)
    attack = deltas(99, 0.02)
    assert np.sqrt(sum(float(np.sum(t.astype(np.float64) ** 2)) for t in attack.values())) < 10
    bodies.insert(1, ("u-mallory", update(federation, "mallory", CLAIMED, attack)))
    committed, refused, dead = await run_one_version(
        tmp_path, federation, HONEST + 1, bodies, max_update_norm=NORM_BOUND
    )
    assert refused == {} and dead == []
    capped = SHARE / (1 - SHARE) * sum(weights)
    expected = weighted_mean([*weights, capped], [*honest, attack])
    start = model()
    for name, tensor in committed.items():
        np.testing.assert_allclose(tensor, start[name] + expected[name], rtol=1e-5, atol=1e-7)
    # The attacker has exactly its share of the step, no more.
    uncapped = weighted_mean([*weights, CLAIMED], [*honest, attack])
    name = next(iter(committed))
    assert not np.allclose(committed[name], start[name] + uncapped[name], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    ("position", "chunked"), [(0, False), (2, False), (2, True)], ids=["first", "third", "chunked"]
)
async def test_an_update_whose_weighted_sum_overflows_is_refused_and_the_rest_committed(
    tmp_path: Path, federation: str, position: int, chunked: bool
):
    """Finite float32 values near 3e38 with a weight of 1000: the weighted sum is infinite.
    Arriving first or after two honest updates, in one message or in chunks, it is refused
    (overflow) with nothing of it folded: every body of it is in the DLQ with that reason,
    and the version is the exact FedAvg of the three honest ones."""
    bodies, weights, honest = honest_updates(federation)
    huge = {name: np.full_like(t, 3e38) for name, t in model().items()}
    if chunked:
        meta = UpdateMeta(
            federation=federation, participant="mallory", round=1, base_version=0,
            num_examples=1000, update_id="u-mallory",
        )  # fmt: skip
        attack = [("u-mallory", body) for body in encode_chunks(meta, huge, "raw", CHUNK)]
        assert len(attack) > 1
    else:
        attack = [("u-mallory", update(federation, "mallory", 1000, huge))]
    bodies[position:position] = attack
    committed, refused, dead = await run_one_version(tmp_path, federation, HONEST, bodies)
    assert refused == {"overflow": 1}
    assert sorted(dead) == sorted(("overflow", body) for _, body in attack)
    expected = weighted_mean(weights, honest)
    start = model()
    for name, tensor in committed.items():
        assert np.isfinite(tensor).all()
        np.testing.assert_allclose(tensor, start[name] + expected[name], rtol=1e-5, atol=1e-7)


class NearTheEdge(SyntheticApp):
    """A model already near float32's limit, as one attacker's earlier finite updates,
    weighted down by the cap, can leave it."""

    def initial_weights(self) -> Weights:
        return {name: np.full_like(w, 2e38) for name, w in super().initial_weights().items()}


async def test_an_update_that_alone_would_take_the_model_past_float32_is_refused(
    tmp_path: Path, federation: str
):
    """Each update finite, the aggregate finite, but the model moved by it would not be:
    the update whose delta added to the model overflows is refused (overflow) and the
    version is the exact FedAvg of the honest ones; without the check the coordinator
    stopped before the commit, with every later honest update refused as non-finite."""
    bodies, weights, honest = honest_updates(federation)
    push = {name: np.full_like(t, 2e38) for name, t in model().items()}
    bodies.insert(1, ("u-mallory", update(federation, "mallory", 1, push)))
    app = NearTheEdge(params=PARAMS)
    committed, refused, dead = await run_one_version(tmp_path, federation, HONEST, bodies, app)
    assert refused == {"overflow": 1}
    assert dead == [("overflow", bodies[1][1])]
    expected = weighted_mean(weights, honest)
    start = app.initial_weights()
    for name, tensor in committed.items():
        np.testing.assert_allclose(tensor, start[name] + expected[name], rtol=1e-6)
