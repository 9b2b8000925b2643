"""Pure parts of the coordinator: the streaming mean, the intake's checks, the modes."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar, cast

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.intake import Intake, body_digest, check_tensors
from fedq.coordinator.modes import OpenVersion, make_mode
from fedq.coordinator.records import UpdateRecord
from fedq.coordinator.strategies import AggregationContext
from fedq.coordinator.strategies.base import WholeDelta, l2_norm
from fedq.coordinator.strategies.early_mean import WeightedMean
from fedq.coordinator.strategies.fedavg import FedAvg
from fedq.coordinator.verdicts import Admitted, Candidate, Duplicate, Refused, Rejection
from fedq.coordinator.version import Update
from fedq.messages.codec import decode_message, encode_message, spec_of
from fedq.messages.schema import UpdateMeta
from fedq.messages.transport import Delivery

MODEL = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


def context(template=MODEL, capacity: int = 4) -> AggregationContext:
    return AggregationContext(template, capacity, 1 << 30, Path("/nonexistent"), version=1)


@given(
    st.lists(
        st.tuples(st.integers(1, 1000), st.floats(-10, 10, width=32), st.floats(0.05, 1)),
        min_size=1,
        max_size=12,
    )
)
def test_streaming_mean_is_the_example_weighted_mean_of_the_scaled_deltas(updates):
    mean = WeightedMean().start(context())
    for weight, value, scale in updates:
        mean.add({k: np.full_like(v, value) for k, v in MODEL.items()}, weight, scale)
    total = sum(w for w, _, _ in updates)
    expected = sum(w * s * value for w, value, s in updates) / total
    for tensor in mean.result().values():
        np.testing.assert_allclose(tensor, expected, rtol=1e-4, atol=1e-5)


def test_folding_many_updates_holds_no_more_memory_than_folding_a_few():
    """The process's own allocations (tracemalloc sees numpy's) while updates stream in:
    an aggregation that kept anything of an update would grow with their number."""
    big = {"w": np.zeros(250_000, np.float32), "b": np.zeros(250_000, np.float32)}  # 2 MB
    mean = WeightedMean().start(context(big))
    tracemalloc.start()
    try:

        def fold(n: int) -> int:
            tracemalloc.reset_peak()
            for i in range(n):
                mean.add({k: np.full_like(v, float(i)) for k, v in big.items()}, 1.0)
            return tracemalloc.get_traced_memory()[1]

        peak_after_few = fold(3)
        peak_after_many = fold(200)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    one_update = sum(v.nbytes for v in big.values())
    assert peak_after_many <= peak_after_few + one_update // 10
    assert held < one_update // 10  # nothing of the updates is still allocated
    assert mean.count == 203


def test_fedavg_adds_lr_times_the_delta_and_keeps_the_old_model():
    new = FedAvg(lr=0.5).step(MODEL, {k: np.ones_like(v) for k, v in MODEL.items()})
    assert new["w"].dtype == np.float32
    np.testing.assert_array_equal(new["w"], np.full((3, 2), 0.5))
    np.testing.assert_array_equal(MODEL["w"], 0)


def update_meta(participant="p", round_: int | None = 2, base=1, federation="f", uid=None):
    extra = {} if uid is None else {"update_id": uid}
    return UpdateMeta(
        federation=federation,
        participant=participant,
        round=round_,
        base_version=base,
        num_examples=5,
        **extra,
    )


def wire(tensors):
    return decode_message(encode_message(update_meta(), tensors)).tensors


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
    intake = Intake("f", spec_of(MODEL), nothing)
    verdict = intake.check(encode_message(update_meta(), tensors), None, Into(nothing, admit_all))
    assert isinstance(verdict, Refused)
    assert verdict.rejection.reason == reason
    assert verdict.rejection.header().startswith(f"{reason}: ")


def test_an_update_above_the_norm_bound_is_rejected_even_in_fp16():
    spec = spec_of(MODEL)
    poisoned = {k: np.full_like(v, 300.0) for k, v in MODEL.items()}  # squares overflow fp16
    half = decode_message(encode_message(update_meta(), poisoned, "fp16")).tensors
    with pytest.raises(Rejection) as err:
        check_tensors(half, spec, max_norm=100.0)
    assert err.value.reason == "norm_exceeded" and "bound 100" in err.value.detail
    small = {k: np.full_like(v, 0.01) for k, v in MODEL.items()}
    assert set(check_tensors(wire(small), spec, max_norm=100.0)[0]) == set(MODEL)


def test_the_norm_a_fold_uses_is_the_intake_s_one_pass():
    """The intake's pass over an update's values gives the fold its norm: the same as the
    fold's own pass would (so no second pass is needed), and NaN refused by it."""
    rng = np.random.default_rng(7)
    tensors = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in MODEL.items()}
    intake = Intake("f", spec_of(MODEL), nothing)
    verdict = intake.check(encode_message(update_meta(), tensors), None, Into(nothing, admit_all))
    assert isinstance(verdict, Candidate)
    update = Update.of(verdict, cast(Delivery, SimpleNamespace(body=b"")))
    assert isinstance(update.pieces, WholeDelta)
    update.pieces.delta = {k: np.zeros_like(v) for k, v in tensors.items()}  # no pass sees it
    assert update.pieces.norm() == l2_norm(tensors) > 0
    tensors[next(iter(MODEL))].reshape(-1)[-1] = np.nan
    with pytest.raises(Rejection, match="NaN or infinity"):
        check_tensors(wire(tensors), spec_of(MODEL))


def admit_all(meta: UpdateMeta) -> Admitted:
    return Admitted(0, 1.0)


def refuse_all(meta: UpdateMeta) -> Admitted:
    raise Rejection("stale", "refused by the mode")


#: A body larger than the tensors and the metadata allowance (1 MiB), which is checked
#: first: its 100,000 metrics (more than a message may carry) are never read.
LARGE_META = UpdateMeta.model_construct(
    federation="f",
    participant="p",
    round=2,
    base_version=1,
    num_examples=5,
    metrics={f"m{i}": 0.0 for i in range(10**5)},
)


def nothing(update_id: str) -> str | None:
    return None


@dataclass(frozen=True)
class Into:
    """The version the intake admits into: its held digests and its mode's answer."""

    held: Callable[[str], str | None]
    rule: Callable[[UpdateMeta], Admitted]

    def held_digest(self, update_id: str, chunk: int) -> str | None:
        return self.held(update_id)

    def admit(self, meta: UpdateMeta, user: str | None) -> Admitted:
        return self.rule(meta)


class TestIntake:
    """The order of the checks decides the reason: the cheap and the identity-related
    ones come before the mode and the tensors."""

    intake = Intake("f", spec_of(MODEL), nothing, verify_identity=True, max_norm=10.0)
    ok: ClassVar = {k: np.ones_like(v) for k, v in MODEL.items()}

    def check(self, body, user="p", held=nothing, admit=admit_all):
        return self.intake.check(body, user, Into(held, admit))

    def reason(self, verdict) -> str:
        assert isinstance(verdict, Refused), verdict
        return verdict.rejection.reason

    def test_a_valid_update_is_a_candidate_with_the_digest_of_its_body(self):
        body = encode_message(update_meta(), self.ok)
        verdict = self.check(body)
        assert isinstance(verdict, Candidate)
        assert verdict.digest == body_digest(body) and set(verdict.deltas) == set(MODEL)

    @pytest.mark.parametrize(
        ("make", "user", "reason"),
        [
            (lambda ok: b"\xc1 not msgpack", "p", "undecodable"),
            (lambda ok: encode_message(update_meta(federation="g"), ok), "p", "wrong_federation"),
            (lambda ok: encode_message(update_meta(), ok), "mallory", "forged"),
            (lambda ok: encode_message(LARGE_META, ok), "p", "too_large"),
        ],
    )
    def test_checks_before_the_mode(self, make, user, reason):
        assert self.reason(self.check(make(self.ok), user=user, admit=refuse_all)) == reason

    def test_the_mode_is_asked_before_the_tensors_are_looked_at(self):
        nan = {k: np.full_like(v, np.nan) for k, v in MODEL.items()}
        assert self.reason(self.check(encode_message(update_meta(), nan), admit=refuse_all)) == (
            "stale"
        )
        assert self.reason(self.check(encode_message(update_meta(), nan))) == "non_finite"

    @pytest.mark.parametrize("of", ["held", "committed"])
    def test_a_copy_is_a_duplicate_and_other_bytes_under_its_id_conflict(self, of):
        body = encode_message(update_meta(uid="u1"), self.ok)
        altered = encode_message(
            update_meta(uid="u1"), {k: np.full_like(v, 1e20) for k, v in MODEL.items()}
        )
        digests = {"u1": body_digest(body)}
        intake = Intake("f", spec_of(MODEL), digests.get if of == "committed" else nothing)
        held = digests.get if of == "held" else nothing
        same = intake.check(body, "p", Into(held, refuse_all))  # the mode is never asked
        assert isinstance(same, Duplicate) and same.of == of
        verdict = intake.check(altered, "p", Into(held, refuse_all))
        assert self.reason(verdict) == "conflicting_duplicate"


def config(**kwargs) -> CoordinatorConfig:
    base = {"federation": "f", "participants": 4, "rounds": 10, "state_dir": Path("/tmp/x")}
    return CoordinatorConfig(**(base | kwargs))


def record(participant: str, base: int) -> UpdateRecord:
    return UpdateRecord("id-" + participant, participant, base + 1, base, 5, 5.0, 0)


def reason_of(mode, open_, meta) -> str:
    with pytest.raises(Rejection) as err:
        mode.admit(open_, meta)
    return err.value.reason


def test_quorum_mode_admits_only_the_open_round_once_per_participant():
    mode = make_mode(config(quorum=2))
    open_ = mode.open(version=1)
    assert open_.round == 2
    assert reason_of(mode, open_, update_meta(round_=1, base=0)) == "stale"
    assert reason_of(mode, open_, update_meta(round_=3, base=2)) == "unknown_round"
    assert reason_of(mode, open_, update_meta(round_=None, base=1)) == "unknown_round"
    assert mode.admit(open_, update_meta()) == Admitted(0, 1.0)
    open_.records.append(record("p", 1))
    assert reason_of(mode, open_, update_meta()) == "already_submitted"


def test_quorum_mode_folds_late_updates_with_the_staleness_weight_when_asked():
    mode = make_mode(config(late_updates="fold", max_staleness=2, staleness_exponent=0.5))
    open_ = mode.open(version=3)
    late = mode.admit(open_, update_meta(round_=3, base=2))
    assert late.staleness == 1 and late.scale == pytest.approx(2**-0.5)
    assert mode.admit(open_, update_meta(round_=2, base=1)).scale == pytest.approx(3**-0.5)
    assert reason_of(mode, open_, update_meta(round_=1, base=0)) == "stale"


@pytest.mark.parametrize(("mode_name", "late_counts"), [("quorum", False), ("async", True)])
def test_a_late_update_counts_beside_the_fresh_ones_in_round_modes(mode_name, late_counts):
    """In quorum mode with --late-updates fold, K fresh updates close a round, however many
    late ones were folded: a late one taking a fresh one's place made the next round's
    updates late in turn, until every version was made of stale ones. In async mode the
    buffer is K updates, whatever model each was trained on."""
    mode = make_mode(config(mode=mode_name, quorum=2, late_updates="fold", max_staleness=2))
    open_ = mode.open(version=3)
    late = UpdateRecord("id-late", "p9", 3, 2, 5, 5.0, staleness=1)
    open_.records += [late, record("p0", 3)]
    assert open_.counted == (2 if late_counts else 1)
    assert (open_.close_reason() == "quorum") is late_counts
    open_.records.append(record("p1", 3))
    assert open_.close_reason() == "quorum"


def test_async_mode_has_no_rounds_and_weighs_by_staleness():
    mode = make_mode(
        config(
            mode="async",
            quorum=3,
            max_staleness=3,
            staleness_exponent=1.0,
            async_remedy="none",  # FedBuff
            async_one_per_version=False,  # one per base version, as before
        )
    )
    open_ = mode.open(version=5)
    assert open_.round is None
    assert mode.admit(open_, update_meta(round_=None, base=5)) == Admitted(0, 1.0)
    assert mode.admit(open_, update_meta(round_=None, base=2)) == Admitted(3, 0.25)
    assert reason_of(mode, open_, update_meta(round_=None, base=1)) == "stale"
    assert reason_of(mode, open_, update_meta(round_=None, base=6)) == "unknown_round"
    open_.records.append(record("p", 2))
    assert reason_of(mode, open_, update_meta(round_=None, base=2)) == "already_submitted"
    assert mode.admit(open_, update_meta(round_=None, base=3)).staleness == 2


def test_async_mode_takes_one_update_per_participant_per_version_by_default():
    mode = make_mode(config(mode="async", quorum=3, max_staleness=3))
    open_ = mode.open(version=5)
    open_.records.append(record("p", 2))
    assert reason_of(mode, open_, update_meta(round_=None, base=3)) == "already_submitted"
    assert reason_of(mode, open_, update_meta(round_=None, base=5)) == "already_submitted"


def test_sync_mode_takes_every_participant():
    assert make_mode(config(mode="sync")).open(0).quorum == 4
    with pytest.raises(ValueError, match="sync mode takes every participant"):
        config(mode="sync", quorum=2)


def test_a_version_closes_at_quorum_or_at_the_deadline_with_min_quorum():
    open_ = OpenVersion(
        version=0, round=1, quorum=3, min_quorum=2, deadline_seconds=10
    )  # fmt: skip
    t0 = open_.opened
    open_.records.append(record("a", 0))
    assert open_.close_reason(t0 + 1) is None
    assert open_.close_reason(t0 + 11) is None  # below min quorum: the deadline extends
    assert open_.seconds_left(t0 + 11) == pytest.approx(9)
    open_.records.append(record("b", 0))
    assert open_.close_reason(t0 + 15) is None
    assert open_.close_reason(t0 + 21) == "deadline"
    open_.records.append(record("c", 0))
    assert open_.close_reason(t0 + 1) == "quorum"


def test_with_sampling_a_fresh_update_from_anyone_not_drawn_is_refused():
    mode = make_mode(config(quorum=2, late_updates="fold", max_staleness=2))
    open_ = mode.open(version=3)
    open_.sample = frozenset({"p0", "p1"})
    assert mode.admit(open_, update_meta(participant="p1", round_=4, base=3)).staleness == 0
    assert reason_of(mode, open_, update_meta(participant="p7", round_=4, base=3)) == "not_sampled"
    # A late update was trained on an older model, whose own sample it was drawn in.
    assert mode.admit(open_, update_meta(participant="p7", round_=3, base=2)).staleness == 1


def test_a_sample_smaller_than_the_quorum_is_one_line():
    with pytest.raises(ValueError, match="draws 2, fewer than --quorum"):
        config(participants=4, quorum=3, sample_fraction=0.5)
    with pytest.raises(ValueError, match="not async"):
        config(mode="async", quorum=2, sample_fraction=0.5)
