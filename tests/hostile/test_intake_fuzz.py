"""The intake against hostile bodies, in process (thousands of them, fast): each is refused
with its reason, nothing raises, and checking one never takes memory out of proportion
to its size, whatever shape it declares."""

from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.intake import Intake, body_digest
from fedq.coordinator.modes import make_mode
from fedq.coordinator.strategies import AggregationContext, build_aggregator
from fedq.coordinator.verdicts import Refused, Verdict
from fedq.coordinator.version import Version
from fedq.messages.codec import encode_message, spec_of
from fedq.messages.schema import UpdateMeta, wire_metrics
from tests.hostile.cases import (
    ATTACKER,
    NORM_BOUND,
    HostileCase,
    bounds_cases,
    captured_cases,
    crafted_cases,
    hostile_documents,
)

FEDERATION = "hostile"
MODEL = SyntheticApp(params=100_000).initial_weights()
OWNER = "p0"
#: An honest update committed in v1: the attacker captured its bytes.
HONEST_ID = "honest-update"
HONEST = encode_message(
    UpdateMeta(
        federation=FEDERATION,
        update_id=HONEST_ID,
        participant=OWNER,
        round=1,
        base_version=0,
        num_examples=100,
    ),
    {k: np.full_like(v, 0.001) for k, v in MODEL.items()},
)
#: What checking a body may take beyond the body itself: 1 MiB, plus 8 bytes per byte
#: of body for the Python objects its metadata decode into (a msgpack map of small ints
#: is ~1 byte per value on the wire and ~8 as Python objects).
SLACK = 1 << 20


def bound(body: bytes) -> int:
    return SLACK + 8 * len(body)


def intake_as_of_v1(max_per_user: int | None = None) -> tuple[Intake, Version]:
    """The intake of a sync coordinator that committed v1 (HONEST in it), and the version
    it is collecting (round 2), with the hostile run's norm bound."""
    committed = {HONEST_ID: body_digest(HONEST)}
    intake = Intake(
        FEDERATION, spec_of(MODEL), committed.get, verify_identity=True, max_norm=NORM_BOUND
    )
    return intake, version_on_v1(max_per_user)


def version_on_v1(max_per_user: int | None) -> Version:
    config = CoordinatorConfig(
        federation=FEDERATION, participants=3, rounds=5, state_dir=Path("/nonexistent")
    )
    mode = make_mode(config)
    context = AggregationContext(MODEL, 3, 1 << 20, Path("/nonexistent"), version=2)
    aggregation = build_aggregator("mean").start(context)
    return Version(mode.open(1), mode, aggregation, max_per_user=max_per_user)


def check(body: bytes, user: str = ATTACKER) -> tuple[Verdict, int]:
    """The verdict on ``body`` and the peak memory Python allocated while checking it."""
    intake, version = intake_as_of_v1()
    tracemalloc.start()
    try:
        verdict = intake.check(body, user, version)
        return verdict, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def reason_of(verdict: Verdict) -> str:
    if isinstance(verdict, Refused):
        return verdict.rejection.reason
    return type(verdict).__name__.lower()


def all_cases() -> list[HostileCase]:
    return crafted_cases(FEDERATION, MODEL) + captured_cases(HONEST)


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c.kind)
def test_each_hostile_case_gets_its_reason_in_bounded_memory(case: HostileCase):
    verdict, peak = check(case.body, OWNER if case.sender == "owner" else ATTACKER)
    assert reason_of(verdict) == case.reason
    assert peak < bound(case.body)


@pytest.mark.parametrize("case", bounds_cases(FEDERATION, MODEL), ids=lambda c: c.kind)
def test_a_number_or_name_out_of_bounds_gets_its_exact_reason(case: HostileCase):
    """Numbers the ledger cannot store, names a terminal or rich would obey: ``schema``,
    with the header that says which field, before anything is admitted or recorded."""
    verdict, _ = check(case.body)
    assert isinstance(verdict, Refused) and verdict.meta is None
    assert verdict.outcome().header() == case.header


def test_a_topk_tensor_declaring_32_gib_is_refused_before_it_is_decoded():
    """The memory bomb: a few bytes declare 2^33 zeros. Decoding first would allocate
    32 GiB (or raise MemoryError out of the intake and stop the coordinator)."""
    [bomb] = [c for c in crafted_cases(FEDERATION, MODEL) if "memory bomb" in c.kind]
    assert len(bomb.body) < 1000
    verdict, peak = check(bomb.body)
    assert reason_of(verdict) == "shape_mismatch"
    assert peak < SLACK


@settings(
    max_examples=400, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
@given(hostile_documents(FEDERATION, MODEL))
def test_any_document_is_refused_without_raising_or_growing(body: bytes):
    verdict, peak = check(body)
    assert isinstance(verdict, Refused), verdict
    assert peak < bound(body)


def test_a_refused_body_is_freed_with_its_verdict_not_by_the_garbage_collector():
    """The collector checks each body in a worker thread and keeps the verdict while the
    refusal is settled beside the collection. A verdict holding the rejection as raised
    holds its traceback: every frame it passed through, the body among their locals, in a
    cycle with the worker thread's frame that only the garbage collector breaks, however
    late. A flood of large refused bodies then piled up (300 of 1.2 MB raised the
    coordinator's peak by 50 MiB in the hostile run)."""
    intake, version = intake_as_of_v1()
    body_bytes = 1 << 20
    schema_error = msgpack.packb({"meta": {"federation": FEDERATION, "pad": "x" * body_bytes}})
    # Refused by a validator of its own (a ValueError in pydantic's error details).
    [many_metrics] = [c.body for c in bounds_cases(FEDERATION, MODEL) if "50,000" in c.kind]

    async def refuse(kinds: list[bytes | None]) -> None:
        for kind in kinds:
            body = kind or b"\xc1" + os.urandom(body_bytes)  # a copy of its own each time
            verdict = await asyncio.to_thread(intake.check, body, ATTACKER, version)
            assert isinstance(verdict, Refused), verdict
            del body, verdict

    collecting = gc.isenabled()
    gc.disable()
    tracemalloc.start()
    try:
        asyncio.run(refuse([None, schema_error, many_metrics] * 10))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        if collecting:
            gc.enable()
    assert held < body_bytes, f"{held / body_bytes:.1f} refused bodies' worth still held"


def test_one_user_flooding_well_formed_updates_is_rate_limited_per_version():
    """Each would be admitted by the mode (distinct ids on the open version); past the
    allowance the user's further updates are refused, another user's are not, and the
    next version starts a new allowance."""
    intake, version = intake_as_of_v1(max_per_user=3)

    def update(participant: str) -> bytes:
        meta = UpdateMeta(
            federation=FEDERATION, participant=participant, round=2, base_version=1,
            num_examples=10,
        )  # fmt: skip
        return encode_message(meta, {k: np.full_like(v, 0.001) for k, v in MODEL.items()})

    def reasons(user: str, n: int) -> list[str]:
        return [reason_of(intake.check(update(user), user, version)) for _ in range(n)]

    assert reasons(ATTACKER, 5) == ["candidate"] * 3 + ["rate_limited"] * 2
    assert reasons(OWNER, 1) == ["candidate"]
    version = version_on_v1(max_per_user=3)
    assert reasons(ATTACKER, 1) == ["candidate"]


def test_an_honest_app_s_odd_metrics_are_left_out_not_refused():
    """A participant sends what its app reports only as far as the bounds allow: a loss
    gone NaN, a name with a space, the 33rd metric are left out, and the update passes."""
    odd = {"loss": float("nan"), "val loss": 1.0, "huge": 1e31} | {f"m{i}": 0.5 for i in range(40)}
    metrics = wire_metrics(odd)
    assert list(metrics) == [f"m{i}" for i in range(32)]
    meta = UpdateMeta(
        federation=FEDERATION, participant=OWNER, round=2, base_version=1, num_examples=10,
        metrics=metrics,
    )  # fmt: skip
    body = encode_message(meta, {k: np.full_like(v, 0.001) for k, v in MODEL.items()})
    assert reason_of(check(body, OWNER)[0]) == "candidate"
