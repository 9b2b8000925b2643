"""The heaviest update's weight capped at its share of the version, and folds that would
overflow float32 refused: pure parts (the broker tests are in tests/hostile/test_weights.py)."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedq.coordinator.assembly import Assembled
from fedq.coordinator.headroom import Headroom
from fedq.coordinator.intake import Intake
from fedq.coordinator.strategies import AggregationContext
from fedq.coordinator.strategies.base import (
    FoldOverflow,
    Piece,
    WholeDelta,
    capped_weights,
    weight_cap,
)
from fedq.coordinator.strategies.clipped_mean import NormClippedMean
from fedq.coordinator.strategies.early_mean import WeightedMean
from fedq.coordinator.strategies.krum import Krum
from fedq.coordinator.verdicts import ChunkCandidate
from fedq.messages.chunks import encode_chunks
from fedq.messages.codec import spec_of
from fedq.messages.schema import UpdateMeta
from fedq.messages.transport import Delivery
from tests.helpers import AdmitFresh, BodyOnly, roomy_assembler

MODEL = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


def context(share: float, capacity: int = 6) -> AggregationContext:
    return AggregationContext(
        MODEL, capacity, 1 << 30, Path("/nonexistent"), version=1, max_weight_share=share
    )


def delta(value: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, value) for k, v in MODEL.items()}


def expected_mean(updates: Sequence[tuple[float, float]], share: float) -> float:
    weights = capped_weights([w for w, _ in updates], share)
    return sum(w * v for w, (_, v) in zip(weights, updates, strict=True)) / sum(weights)


def test_the_cap_is_share_over_one_minus_share_times_the_others():
    assert weight_cap(600, 0.75) == pytest.approx(1800)
    assert weight_cap(600, 0.5) == pytest.approx(600)
    assert weight_cap(600, 1.0) == np.inf
    assert weight_cap(0, 0.75) == np.inf  # alone: it is the version
    assert capped_weights([100, 1e12, 200, 300], 0.75) == pytest.approx([100, 1800, 200, 300])
    assert capped_weights([100, 200], 0.75) == [100, 200]  # under the cap: FedAvg


@given(
    st.lists(
        st.tuples(st.sampled_from([1, 10, 100, 10**6, 10**12]), st.floats(-10, 10, width=32)),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([0.5, 0.6, 0.75, 0.9]),
)
def test_the_streaming_mean_caps_the_heaviest_whatever_the_order(updates, share):
    expected = expected_mean(updates, share)
    for order in itertools.islice(itertools.permutations(updates), 6):
        mean = WeightedMean().start(context(share))
        for weight, value in order:
            mean.add(delta(value), weight)
        for tensor in mean.result().values():
            np.testing.assert_allclose(tensor, expected, rtol=1e-5, atol=1e-5)


def test_a_claimed_huge_weight_takes_at_most_its_share_of_clipped_mean_and_multi_krum():
    updates = [(100, 0.01), (200, 0.02), (300, 0.03), (10**12, -0.5)]
    expected = expected_mean(updates, 0.75)
    for rule in (NormClippedMean(clip_norm=10.0), Krum(byzantine=0, select=4)):
        aggregation = rule.start(context(0.75, capacity=4))
        for weight, value in updates:
            aggregation.add(delta(value), weight)
        for tensor in aggregation.result().values():
            np.testing.assert_allclose(tensor, expected, rtol=1e-5)


@pytest.mark.parametrize("share", [0.75, 1.0])
def test_a_fold_that_would_overflow_is_refused_and_changes_nothing(share):
    mean = WeightedMean().start(context(share))
    mean.add(delta(0.5), 100)
    mean.add(delta(0.25), 300)
    with pytest.raises(FoldOverflow):
        mean.add(delta(3e38), 1000)
    with pytest.raises(FoldOverflow):
        mean.add(delta(1.0), 1e39)  # a weight beyond float32
    assert mean.count == 2
    for tensor in mean.result().values():
        np.testing.assert_allclose(tensor, (100 * 0.5 + 300 * 0.25) / 400, rtol=1e-6)


def test_values_near_the_float32_limit_with_small_weights_stay_finite():
    """A convex combination of finite values is finite: the kept-aside heaviest is joined
    normalised, never summed at its weight."""
    mean = WeightedMean().start(context(0.75))
    mean.add(delta(3e38), 1)
    mean.add(delta(3e38), 1)
    for tensor in mean.result().values():
        assert np.isfinite(tensor).all()


@pytest.mark.parametrize(
    ("model", "delta", "fits"),
    [
        ([2e38, 0.0], [2e38, 0.0], False),  # past float32 where both are large
        ([2e38, 0.0], [1e38, -1e38], True),  # within: the fast path alone decides
        ([3e38, 0.0], [0.0, 3e38], True),  # the peaks add past it, but at other entries
        ([-3e38, 1.0], [-1e38, 0.0], False),  # negative overflow too
        ([0.0, 0.0], [np.nan, 0.0], False),
    ],
)
def test_headroom_refuses_exactly_the_deltas_that_take_the_model_past_float32(model, delta, fits):
    base = {"w": np.array(model, np.float32)}
    assert Headroom.of(base).fits(WholeDelta({"w": np.array(delta, np.float32)})) is fits


class CountedDelta(WholeDelta):
    """A whole delta that counts the passes made over its values."""

    def __init__(self, delta: dict[str, np.ndarray]) -> None:
        super().__init__(delta)
        self.passes = 0

    def __iter__(self) -> Iterator[Piece]:
        self.passes += 1
        yield from super().__iter__()


@pytest.mark.parametrize(("value", "passes"), [(0.5, 1), (1e38, 2)])
def test_a_fold_is_checked_by_a_pass_only_when_its_norm_leaves_room_for_overflow(value, passes):
    """The norm bounds every value, so ordinary updates are folded in one pass (for a
    chunked update, one read of its spool); only one whose norm could reach float32's limit
    is checked value by value first."""
    mean = WeightedMean().start(context(1.0))
    mean.add_pieces(CountedDelta(delta(0.25)), 1)
    update = CountedDelta(delta(value))
    mean.add_pieces(update, 1)
    assert update.passes == passes


@pytest.mark.parametrize(("value", "passes"), [(0.5, 0), (2e38, 1)])
def test_headroom_reads_an_update_only_when_its_norm_leaves_room_for_overflow(value, passes):
    update = CountedDelta(delta(value))
    assert Headroom.of(delta(1.0)).fits(update)
    assert update.passes == passes


def test_the_heaviest_chunked_update_waits_on_disk_and_joins_as_a_copy_in_memory_would(
    tmp_path: Path,
):
    """The heaviest update of a version is kept aside until the version closes. One that
    came in chunks stays in its spool file (a second name of it), not in a model-sized
    buffer: the mean is bit for bit the one made from copies in memory, the file goes
    with the aggregation, and nothing of the model's size is allocated meanwhile."""
    template = {"w": np.zeros(1_000_000, np.float32), "b": np.zeros(1000, np.float32)}
    rng = np.random.default_rng(7)
    chunk_bytes = 256 << 10
    spec = spec_of(template)
    intake = Intake("f", spec, lambda update_id: None)
    assembler = roomy_assembler(tmp_path / "spool", spec, chunk_bytes)
    # Heavier and heavier, then lighter: each newcomer but the last replaces the one aside.
    weights = [10, 1000, 10**6, 50]
    deltas = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in template.items()}
              for _ in weights]  # fmt: skip
    share = 0.75
    on_disk = WeightedMean().start(
        AggregationContext(template, 4, 0, tmp_path, version=1, max_weight_share=share)
    )
    tracemalloc.start()
    try:
        for i, (weight, delta) in enumerate(zip(weights, deltas, strict=True)):
            meta = UpdateMeta(federation="f", participant=f"p{i}", round=1, base_version=0,
                              num_examples=weight)  # fmt: skip
            for body in encode_chunks(meta, delta, chunk_bytes=chunk_bytes):
                verdict = intake.check(body, None, AdmitFresh())
                assert isinstance(verdict, ChunkCandidate), verdict
                outcome = assembler.add(verdict, cast(Delivery, BodyOnly(body)))
            assert isinstance(outcome, Assembled)
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            on_disk.add_pieces(assembler.finish(outcome.stream), float(weight))
            held = tracemalloc.get_traced_memory()[1] - before
            outcome.stream.close()  # as the collector does once the update is folded
            kept = list((tmp_path / "spool").glob("*.kept-*"))
            assert len(kept) == 1, kept  # the heaviest so far, and only it
            assert held < 4_000_000 / 2, f"{held} bytes allocated by a fold: a model-sized copy"
    finally:
        tracemalloc.stop()
    in_memory = WeightedMean().start(
        AggregationContext(template, 4, 0, tmp_path, version=1, max_weight_share=share)
    )
    for weight, delta in zip(weights, deltas, strict=True):
        in_memory.add(delta, float(weight))
    expected = in_memory.result()
    result = on_disk.result()
    assert not list((tmp_path / "spool").glob("*.chunks*")), "a kept spool outlived the result"
    for name in template:
        np.testing.assert_array_equal(result[name], expected[name])
    on_disk.close()  # again: harmless
