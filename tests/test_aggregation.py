"""Pure parts of the coordinator: streaming FedAvg, the server step, validation, rounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedq.coordinator.accumulator import WeightedMeanAccumulator
from fedq.coordinator.fedavg import apply_mean_delta
from fedq.coordinator.rounds import QuorumRound
from fedq.coordinator.validation import Rejection, check_tensors, spec_of
from fedq.messages.codec import decode_message, encode_message
from fedq.messages.schema import UpdateMeta

MODEL = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


@given(
    st.lists(st.tuples(st.integers(1, 1000), st.floats(-10, 10, width=32)), min_size=1, max_size=12)
)
def test_streaming_mean_equals_weighted_average(updates):
    acc = WeightedMeanAccumulator(MODEL)
    deltas = []
    for weight, value in updates:
        delta = {k: np.full_like(v, value) for k, v in MODEL.items()}
        deltas.append((weight, delta))
        acc.add(delta, weight)
    total = sum(w for w, _ in deltas)
    for name in MODEL:
        expected = sum(w * d[name] for w, d in deltas) / total
        np.testing.assert_allclose(acc.mean()[name], expected, rtol=1e-5, atol=1e-5)


def test_accumulator_memory_does_not_grow_with_updates():
    acc = WeightedMeanAccumulator(MODEL)
    before = sum(a.nbytes for a in (*acc._sums.values(), *acc._scratch.values()))
    for _ in range(100):
        acc.add({k: np.ones_like(v) for k, v in MODEL.items()}, 3)
    after = sum(a.nbytes for a in (*acc._sums.values(), *acc._scratch.values()))
    assert before == after and acc.count == 100


def test_server_step_adds_the_mean_delta_and_keeps_the_old_model():
    new = apply_mean_delta(MODEL, {k: np.ones_like(v) for k, v in MODEL.items()}, lr=0.5)
    assert new["w"].dtype == np.float32
    np.testing.assert_array_equal(new["w"], np.full((3, 2), 0.5))
    np.testing.assert_array_equal(MODEL["w"], 0)


def wire(tensors):
    meta = UpdateMeta(federation="f", participant="p", round=1, base_version=0, num_examples=1)
    return decode_message(encode_message(meta, tensors)).tensors


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [
        ({"w": np.zeros((3, 2), np.float32)}, "tensor_mismatch"),
        ({"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32)}, "shape_mismatch"),
        ({"w": np.zeros((3, 2), np.float64), "b": np.zeros(2, np.float32)}, "dtype_mismatch"),
        ({"w": np.full((3, 2), np.nan, np.float32), "b": np.zeros(2, np.float32)}, "non_finite"),
        ({"w": np.zeros((3, 2), np.float32), "b": np.array([1, np.inf], np.float32)}, "non_finite"),
    ],
)
def test_invalid_tensors_are_rejected_with_their_reason(tensors, reason):
    with pytest.raises(Rejection) as err:
        check_tensors(wire(tensors), spec_of(MODEL))
    assert err.value.reason == reason
    assert err.value.header().startswith(f"{reason}: ")


def test_valid_tensors_pass():
    deltas = check_tensors(wire({k: np.ones_like(v) for k, v in MODEL.items()}), spec_of(MODEL))
    assert set(deltas) == set(MODEL)


def meta(participant="p", round_=2, base=1):
    return UpdateMeta(
        federation="f", participant=participant, round=round_, base_version=base, num_examples=5
    )


def test_round_admission_rejects_stale_future_and_second_updates():
    current = QuorumRound(
        number=2, version=1, model=MODEL, quorum=2, min_quorum=1, deadline_seconds=60
    )
    for bad, reason in [
        (meta(round_=1, base=0), "stale"),
        (meta(round_=3, base=2), "unknown_round"),
    ]:
        with pytest.raises(Rejection) as err:
            current.admit(bad)
        assert err.value.reason == reason
    ok = meta()
    current.admit(ok)
    current.fold(ok, {k: np.ones_like(v) for k, v in MODEL.items()}, delivery=None)  # type: ignore[arg-type]
    with pytest.raises(Rejection) as err:
        current.admit(meta())
    assert err.value.reason == "already_submitted"


def test_round_closes_at_quorum_or_at_deadline_with_min_quorum():
    current = QuorumRound(
        number=1, version=0, model=MODEL, quorum=3, min_quorum=2, deadline_seconds=10
    )
    t0 = current.opened
    fold = {k: np.ones_like(v) for k, v in MODEL.items()}
    current.fold(meta("a", 1, 0), fold, None)  # type: ignore[arg-type]
    assert current.close_reason(t0 + 1) is None
    assert current.close_reason(t0 + 11) is None  # below min quorum: the deadline extends
    assert current.seconds_left(t0 + 11) == pytest.approx(9)
    current.fold(meta("b", 1, 0), fold, None)  # type: ignore[arg-type]
    assert current.close_reason(t0 + 15) is None
    assert current.close_reason(t0 + 21) == "deadline"
    current.fold(meta("c", 1, 0), fold, None)  # type: ignore[arg-type]
    assert current.close_reason(t0 + 1) == "quorum"


def test_an_update_above_the_norm_bound_is_rejected_even_in_fp16():
    spec = spec_of(MODEL)
    poisoned = {k: np.full_like(v, 300.0) for k, v in MODEL.items()}  # squares overflow fp16
    meta = UpdateMeta(federation="f", participant="p", round=1, base_version=0, num_examples=1)
    half = decode_message(encode_message(meta, poisoned, "fp16")).tensors
    with pytest.raises(Rejection) as err:
        check_tensors(half, spec, max_norm=100.0)
    assert err.value.reason == "norm_exceeded" and "bound 100" in err.value.detail
    small = {k: np.full_like(v, 0.01) for k, v in MODEL.items()}
    assert set(check_tensors(wire(small), spec, max_norm=100.0)) == set(MODEL)
