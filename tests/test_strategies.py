"""Aggregators, server optimizers and privacy: hand-computed cases and properties.

The model is tiny, {"w": (2, 2), "b": (3,)}, so every expected number can be checked by
hand; properties use small integer-valued deltas, whose float sums are exact in any order.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedq.coordinator.strategies import (
    AGGREGATORS,
    OPTIMIZERS,
    AggregationContext,
    StrategyError,
    build_aggregator,
    build_optimizer,
)
from fedq.coordinator.strategies.clipped_mean import NormClippedMean, l2_norm
from fedq.coordinator.strategies.early_mean import WeightedMean
from fedq.coordinator.strategies.fedadagrad import FedAdagrad
from fedq.coordinator.strategies.fedadam import FedAdam
from fedq.coordinator.strategies.fedavgm import FedAvgM
from fedq.coordinator.strategies.fedyogi import FedYogi
from fedq.coordinator.strategies.krum import Krum, krum_scores, squared_distances
from fedq.coordinator.strategies.median import CoordinateMedian
from fedq.coordinator.strategies.privacy import DifferentiallyPrivateMean, PrivacyAccountant
from fedq.coordinator.strategies.sparse_mean import SparseMean
from fedq.coordinator.strategies.stack import DeltaStack
from fedq.coordinator.strategies.trimmed_mean import TrimmedMean

TEMPLATE = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float32)}
P = 7
GiB = 1 << 30


def model(w, b):
    """A delta/model from the flat values of w (4) and b (3)."""
    return {
        "w": np.array(w, np.float32).reshape(2, 2),
        "b": np.array(b, np.float32),
    }


def readonly(delta):
    """Like the views ``add`` gets: read-only."""
    views = {name: t.copy() for name, t in delta.items()}
    for t in views.values():
        t.flags.writeable = False
    return views


def context(spill_dir, capacity, memory_budget=GiB, version=0, template=TEMPLATE):
    return AggregationContext(
        template=template,
        capacity=capacity,
        memory_budget=memory_budget,
        spill_dir=Path(spill_dir),
        version=version,
    )


def aggregate(aggregator, updates, spill_dir, capacity=None, **kwargs):
    """Run one version: ``updates`` are (delta, weight) or (delta, weight, scale)."""
    aggregation = aggregator.start(context(spill_dir, capacity or len(updates), **kwargs))
    try:
        for delta, *rest in updates:
            aggregation.add(readonly(delta), *rest)
        return aggregation.result()
    finally:
        aggregation.close()


def assert_model_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].dtype == np.float32 and actual[name].shape == expected[name].shape
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def assert_model_close(actual, expected, rtol=1e-6, atol=1e-6):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].dtype == np.float32 and actual[name].shape == expected[name].shape
        np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, atol=atol)


def flat(delta):
    return np.concatenate([delta["w"].ravel(), delta["b"].ravel()])


# -- DeltaStack ---------------------------------------------------------------------------


def test_stack_rows_are_scaled_copies_in_template_order(tmp_path):
    stack = DeltaStack(context(tmp_path, 2))
    source = model([1, 2, 3, 4], [5, 6, 7])
    stack.add(source, 10, 0.5)
    source["w"][:] = 99  # the caller's buffer is reused: the stack must have copied
    assert stack.count == 1 and stack.spill_path is None
    np.testing.assert_array_equal(stack.weights, [10])
    everything = stack.reduce_columns(lambda slab: slab[0])
    np.testing.assert_array_equal(everything, [0.5, 1, 1.5, 2, 2.5, 3, 3.5])
    assert_model_equal(stack.unflatten(everything), model([0.5, 1, 1.5, 2], [2.5, 3, 3.5]))


def test_stack_spills_beyond_the_budget_and_deletes_the_file_on_close(tmp_path):
    stack = DeltaStack(context(tmp_path, 3, memory_budget=3 * P * 4 - 1))
    assert stack.spill_path is not None and stack.spill_path.parent == tmp_path
    assert stack.spill_path.exists()
    stack.close()
    assert not stack.spill_path.exists()
    stack.close()  # idempotent
    assert list(tmp_path.iterdir()) == []


def test_stack_fits_in_ram_at_exactly_the_budget(tmp_path):
    stack = DeltaStack(context(tmp_path, 3, memory_budget=3 * P * 4))
    assert stack.spill_path is None and list(tmp_path.iterdir()) == []


def test_stack_helpers_work_block_by_block(tmp_path):
    rows = [model([1, 2, 3, 4], [5, 6, 7]), model([0, -1, 2, 0], [1, 1, 1])]
    stack = DeltaStack(context(tmp_path, 2, memory_budget=0))
    stack.block_bytes = 2 * 4 * 3  # 3 columns a block: blocks of 3, 3 and 1 columns
    for delta, weight in zip(rows, [1, 3], strict=True):
        stack.add(delta, weight)
    matrix = np.stack([flat(r) for r in rows])
    assert [c for c, _ in stack.column_blocks()] == [slice(0, 3), slice(3, 6), slice(6, 7)]
    np.testing.assert_array_equal(stack.reduce_columns(lambda s: s.max(axis=0)), matrix.max(0))
    # dot products: row0.row0 = 1+4+9+16+25+36+49 = 140, row0.row1 = 0-2+6+0+5+6+7 = 22,
    # row1.row1 = 0+1+4+0+1+1+1 = 8
    np.testing.assert_array_equal(stack.gram(), [[140, 22], [22, 8]])
    # (1 * row0 + 3 * row1) / 4
    np.testing.assert_array_equal(
        stack.weighted_rows_mean([0, 1], [1, 3]), [0.25, -0.25, 2.25, 1, 2, 2.25, 2.5]
    )
    stack.close()


# -- median -------------------------------------------------------------------------------


def test_median_is_coordinate_wise_and_ignores_example_counts(tmp_path):
    updates = [
        (model([1, 2, 3, 4], [0, 0, 0]), 1),
        (model([5, 0, 1, 1], [1, 2, 3]), 1000),
        (model([2, 2, 2, 10], [-1, 7, 1]), 1),
    ]
    result = aggregate(CoordinateMedian(), updates, tmp_path)
    assert_model_equal(result, model([2, 2, 2, 4], [0, 2, 1]))


def test_median_of_an_even_count_averages_the_two_middle_values(tmp_path):
    updates = [(model([v] * 4, [v] * 3), 1) for v in (1, 2, 4, 100)]
    result = aggregate(CoordinateMedian(), updates, tmp_path)
    assert_model_equal(result, model([3] * 4, [3] * 3))


def test_median_takes_the_staleness_scaled_deltas(tmp_path):
    updates = [
        (model([1, 2, 3, 4], [0, 0, 0]), 1, 1.0),
        (model([5, 0, 1, 1], [1, 2, 3]), 1, 1.0),
        (model([2, 2, 2, 10], [-1, 7, 1]), 1, 0.5),  # counts as [1, 1, 1, 5], [-0.5, 3.5, 0.5]
    ]
    result = aggregate(CoordinateMedian(), updates, tmp_path)
    assert_model_equal(result, model([1, 1, 1, 4], [0, 2, 0.5]))


# -- trimmed mean -------------------------------------------------------------------------


def test_trimmed_mean_drops_the_extremes_of_each_coordinate(tmp_path):
    updates = [
        (model([1, 2, 3, 4], [100, 0, 0]), 1),
        (model([2, 3, 4, 5], [-100, 0, 1]), 50),
        (model([3, 4, 5, 6], [1, 0, 2]), 1),
        (model([40, -5, 6, 7], [3, 0, 3]), 1),
    ]
    # floor(0.25 * 4) = 1 value cut at each end, e.g. w[0]: 1, 2, 3, 40 -> (2 + 3) / 2
    result = aggregate(TrimmedMean(0.25), updates, tmp_path)
    assert_model_equal(result, model([2.5, 2.5, 4.5, 5.5], [2, 0, 1.5]))


def test_trimmed_mean_with_too_few_updates_to_trim_is_the_unweighted_mean(tmp_path):
    updates = [(model([1] * 4, [0] * 3), 1), (model([2] * 4, [6] * 3), 5)]
    # floor(0.4 * 2) = 0: nothing cut
    result = aggregate(TrimmedMean(0.4), updates, tmp_path)
    assert_model_equal(result, model([1.5] * 4, [3] * 3))


def test_trimmed_mean_of_one_update_is_that_update(tmp_path):
    update = model([1, 2, 3, 4], [5, 6, 7])
    assert_model_equal(aggregate(TrimmedMean(0.49), [(update, 1)], tmp_path), update)


@pytest.mark.parametrize("fraction", [-0.1, 0.5, 0.7])
def test_trimmed_mean_refuses_a_fraction_outside_0_to_half(fraction):
    with pytest.raises(StrategyError, match="trim_fraction"):
        TrimmedMean(fraction)


# -- Krum ---------------------------------------------------------------------------------


def krum_updates(values, weights):
    """Updates with ``value`` in w[0, 0] and b[2], zero elsewhere."""
    return [(model([x, 0, 0, 0], [0, 0, x]), n) for x, n in zip(values, weights, strict=True)]


def test_krum_picks_the_update_closest_to_its_neighbours(tmp_path):
    # f = 1, k = 5: 2 neighbours. Squared distances are twice (x_i - x_j)^2, so the scores
    # of 0, 1, 2, 4, 100 are 2*(1+4), 2*(1+1), 2*(1+4), 2*(4+9), 2*(96^2+98^2).
    updates = krum_updates([0, 1, 2, 4, 100], [1, 2, 3, 4, 5])
    matrix = np.stack([flat(d) for d, _ in updates]).astype(np.float64)
    distances = squared_distances(matrix @ matrix.T)
    np.testing.assert_array_equal(krum_scores(distances, 2), [10, 4, 10, 26, 37640])
    result = aggregate(Krum(byzantine=1), updates, tmp_path)
    assert_model_equal(result, model([1, 0, 0, 0], [0, 0, 1]))


def test_multi_krum_is_the_example_weighted_mean_of_the_best(tmp_path):
    # the 3 best are 1 (score 4), 0 and 2 (10 each): (1*0 + 2*1 + 3*2) / (1 + 2 + 3) = 4/3
    updates = krum_updates([0, 1, 2, 4, 100], [1, 2, 3, 4, 5])
    result = aggregate(Krum(byzantine=1, select=3), updates, tmp_path)
    assert_model_close(result, model([4 / 3, 0, 0, 0], [0, 0, 4 / 3]))


def test_krum_after_a_deadline_uses_the_updates_it_has(tmp_path):
    # capacity 5 but 3 updates: max(1, 3 - 1 - 2) = 1 neighbour, the outlier 100 scores
    # 2*97^2 while 0 and 1 score 2; multi-Krum of 2 averages them: (1*0 + 3*1) / 4
    updates = krum_updates([0, 1, 100], [1, 3, 5])
    result = aggregate(Krum(byzantine=1, select=2), updates, tmp_path, capacity=5)
    assert_model_close(result, model([0.75, 0, 0, 0], [0, 0, 0.75]))


def test_krum_of_one_update_is_that_update(tmp_path):
    update = model([1, 2, 3, 4], [5, 6, 7])
    assert_model_equal(aggregate(Krum(byzantine=2), [(update, 1)], tmp_path, capacity=7), update)


def test_krum_check_refuses_a_capacity_of_at_most_2f_plus_2():
    Krum(byzantine=1).check(5)
    with pytest.raises(StrategyError, match=r"byzantine=1.*got 4.*at least 5"):
        Krum(byzantine=1).check(4)
    with pytest.raises(StrategyError, match="select"):
        Krum(byzantine=1, select=6).check(5)


@pytest.mark.parametrize("options", [{"byzantine": -1}, {"select": 0}])
def test_krum_refuses_bad_options(options):
    with pytest.raises(StrategyError):
        Krum(**options)


# -- clipped mean -------------------------------------------------------------------------


def test_clipped_mean_clips_each_delta_over_all_tensors_then_averages(tmp_path):
    updates = [
        (model([3, 0, 0, 0], [4, 0, 0]), 1),  # norm 5 over both tensors -> [0.6], [0.8]
        (model([0.5, 0, 0, 0], [0, 0, 0]), 3),  # norm 0.5: kept as it is
    ]
    # w[0]: (1 * 0.6 + 3 * 0.5) / 4 = 0.525, b[0]: 0.8 / 4 = 0.2
    result = aggregate(NormClippedMean(clip_norm=1.0), updates, tmp_path)
    assert_model_close(result, model([0.525, 0, 0, 0], [0.2, 0, 0]))


def test_clipped_mean_clips_the_staleness_scaled_delta(tmp_path):
    # norm 2 scaled by 0.25 is 0.5 <= 1: contributes 0.25 * delta, not clipped first
    updates = [(model([0, 0, 0, 0], [1.2, 1.6, 0]), 1, 0.25)]
    result = aggregate(NormClippedMean(clip_norm=1.0), updates, tmp_path)
    assert_model_close(result, model([0] * 4, [0.3, 0.4, 0]))


@pytest.mark.parametrize("clip_norm", [0, -1, math.inf])
def test_clipped_mean_refuses_a_clip_norm_that_is_not_positive(clip_norm):
    with pytest.raises(StrategyError, match="clip_norm"):
        NormClippedMean(clip_norm)


def test_clipped_mean_streams():
    assert not NormClippedMean(1.0).holds_updates


# -- properties of the aggregators ---------------------------------------------------------

values = st.integers(-8, 8).map(float)
deltas = st.builds(
    model, st.lists(values, min_size=4, max_size=4), st.lists(values, min_size=3, max_size=3)
)
versions = st.lists(st.tuples(deltas, st.integers(1, 50)), min_size=1, max_size=7)


def run(aggregator, updates, capacity=None, **kwargs):
    with tempfile.TemporaryDirectory() as spill_dir:
        result = aggregate(aggregator, updates, spill_dir, capacity, **kwargs)
        assert list(Path(spill_dir).iterdir()) == [], "a spill file survived close()"
        return result


def shuffled(data, updates):
    order = data.draw(st.permutations(range(len(updates))))
    return [updates[i] for i in order]


def distinct_krum_scores(updates, byzantine):
    """No ties, which Krum breaks by arrival order (exact: the values are small integers)."""
    if len(updates) == 1:
        return True
    matrix = np.stack([flat(d) for d, _ in updates]).astype(np.float64)
    neighbours = min(max(1, len(updates) - byzantine - 2), len(updates) - 1)
    scores = krum_scores(squared_distances(matrix @ matrix.T), neighbours)
    return len(set(scores.tolist())) == len(scores)


@given(versions, st.data())
def test_robust_rules_do_not_depend_on_arrival_order(updates, data):
    again = shuffled(data, updates)
    for rule in (CoordinateMedian(), TrimmedMean(0.2)):
        assert_model_equal(run(rule, again), run(rule, updates))
    assert_model_close(run(WeightedMean(), again), run(WeightedMean(), updates), 1e-5, 1e-5)


@given(versions, st.sampled_from([1, 2]), st.data())
def test_krum_does_not_depend_on_arrival_order(updates, select, data):
    assume(distinct_krum_scores(updates, byzantine=1))
    again = shuffled(data, updates)
    krum = Krum(byzantine=1, select=select)
    assert_model_equal(run(krum, again, capacity=8), run(krum, updates, capacity=8))


@given(deltas, st.lists(st.integers(1, 50), min_size=1, max_size=6))
def test_identical_updates_aggregate_to_that_update(delta, weights):
    updates = [(delta, n) for n in weights]
    for rule in (CoordinateMedian(), TrimmedMean(0.3), Krum(byzantine=1, select=2)):
        assert_model_equal(run(rule, updates, capacity=max(5, len(updates))), delta)
    assert_model_close(run(WeightedMean(), updates), delta, 1e-6, 1e-6)


def test_sparse_mean_divides_each_entry_by_a_power_mean_of_all_and_its_senders(tmp_path):
    """Weights 1 and 3 (W = 4). w[0] sent by both, w[1] by the first only (C = 1), w[2] by
    the second only (C = 3), w[3] by neither."""
    first = model([2, 8, 0, 0], [1, 1, 1])
    second = model([6, 0, 4, 0], [1, 1, 1])
    for exponent in (0.0, 0.5, 1.0):
        result = aggregate(SparseMean(exponent), [(first, 1), (second, 3)], tmp_path)

        def divisor(senders, e=exponent):
            return 4 ** (1 - e) * senders**e

        expected = model([(2 + 18) / 4, 8 / divisor(1), 12 / divisor(3), 0], [1, 1, 1])
        assert_model_close(result, expected)
    # exponent 0 is FedAvg's mean, even with sparse updates
    assert_model_close(
        aggregate(SparseMean(0.0), [(first, 1), (second, 3)], tmp_path),
        aggregate(WeightedMean(), [(first, 1), (second, 3)], tmp_path),
    )


@given(versions, st.floats(0, 1))
def test_sparse_mean_of_dense_updates_is_the_weighted_mean(updates, exponent):
    dense = [(model(flat(d)[:4] + 9, flat(d)[4:] + 9), w) for d, w in updates]  # no zeros
    assert_model_close(run(SparseMean(exponent), dense), run(WeightedMean(), dense), 1e-5, 1e-5)


def test_sparse_mean_counts_senders_by_weight_not_by_staleness(tmp_path):
    """A stale update's entries are scaled like the plain mean's, but it still sent them:
    C counts its weight in full."""
    only = model([4, 0, 0, 0], [0, 0, 0])
    result = aggregate(SparseMean(1.0), [(only, 2, 0.5)], tmp_path)
    assert_model_close(result, model([2, 0, 0, 0], [0, 0, 0]))


@pytest.mark.parametrize("exponent", [-0.1, 1.5])
def test_sparse_mean_refuses_an_exponent_outside_0_to_1(exponent):
    with pytest.raises(StrategyError, match="exponent"):
        build_aggregator("sparse_mean", {"exponent": exponent})


@given(versions)
def test_trimmed_mean_without_trimming_is_the_unweighted_mean(updates):
    unweighted = [(delta, 1) for delta, _ in updates]
    assert_model_close(run(TrimmedMean(0.0), updates), run(WeightedMean(), unweighted))


@given(
    versions,
    st.floats(0.1, 10),
    st.lists(st.floats(0.01, 1), min_size=7, max_size=7),
)
def test_clipped_mean_never_moves_further_than_the_clip_norm(updates, clip_norm, scales):
    scaled = [(d, n, s) for (d, n), s in zip(updates, scales, strict=False)]
    assert l2_norm(run(NormClippedMean(clip_norm), scaled)) <= clip_norm * (1 + 1e-5)


@settings(max_examples=50)
@given(versions, st.integers(1, 40), st.data())
def test_a_spilled_stack_gives_exactly_what_one_in_ram_gives(updates, block_bytes, data):
    scaled = [(d, n, data.draw(st.sampled_from([1.0, 0.5, 0.25]))) for d, n in updates]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DeltaStack, "block_bytes", block_bytes)  # several column blocks
        for rule in (CoordinateMedian(), TrimmedMean(0.2), Krum(1), Krum(1, select=3)):
            in_ram = run(rule, scaled, capacity=8)
            spilled = run(rule, scaled, capacity=8, memory_budget=0)
            assert_model_equal(spilled, in_ram)


# -- differential privacy ------------------------------------------------------------------


def test_dp_mean_clips_ignores_example_counts_and_divides_by_expected_updates(tmp_path):
    dp = DifferentiallyPrivateMean(clip_norm=1.0, noise_multiplier=0.0, expected_updates=4, seed=7)
    # norm 100 -> clipped to [0.6], [0.8], whatever its 1000 examples; / 4 -> norm 1/4
    result = aggregate(dp, [(model([60, 0, 0, 0], [80, 0, 0]), 1000)], tmp_path)
    assert_model_close(result, model([0.15, 0, 0, 0], [0.2, 0, 0]))
    assert l2_norm(result) == pytest.approx(1 / 4)
    # a small update is not clipped: (0.6 + 0.5) / 4 and 0.8 / 4
    both = [(model([60, 0, 0, 0], [80, 0, 0]), 1000), (model([0.5, 0, 0, 0], [0, 0, 0]), 1)]
    assert_model_close(aggregate(dp, both, tmp_path), model([0.275, 0, 0, 0], [0.2, 0, 0]))


def dp_noise(tmp_path, seed, version, template=TEMPLATE):
    dp = DifferentiallyPrivateMean(
        clip_norm=2.0, noise_multiplier=1.5, expected_updates=5, seed=seed
    )
    zero = {name: np.zeros_like(t) for name, t in template.items()}
    return aggregate(dp, [(zero, 1)], tmp_path, version=version, template=template)


def test_dp_noise_is_reproducible_per_seed_and_version(tmp_path):
    first = dp_noise(tmp_path, seed=1234, version=3)
    assert_model_equal(dp_noise(tmp_path, seed=1234, version=3), first)
    for other in (dp_noise(tmp_path, seed=1234, version=4), dp_noise(tmp_path, seed=99, version=3)):
        assert not np.array_equal(other["w"], first["w"])


def test_dp_noise_has_std_noise_multiplier_times_clip_over_expected_updates(tmp_path):
    noise = dp_noise(tmp_path, seed=5, version=1, template={"x": np.zeros(20_000, np.float32)})
    # 1.5 * 2.0 / 5 = 0.6; the sample std of 20000 draws is within 2% of it
    assert noise["x"].std() == pytest.approx(0.6, rel=0.02)
    assert abs(noise["x"].mean()) < 0.02


@pytest.mark.parametrize(
    "options",
    [
        {"clip_norm": 0.0, "noise_multiplier": 1.0, "expected_updates": 1, "seed": 0},
        {"clip_norm": 1.0, "noise_multiplier": -1.0, "expected_updates": 1, "seed": 0},
        {"clip_norm": 1.0, "noise_multiplier": 1.0, "expected_updates": 0, "seed": 0},
        {"clip_norm": 1.0, "noise_multiplier": 1.0, "expected_updates": 1, "seed": -1},
    ],
)
def test_dp_mean_refuses_bad_options(options):
    with pytest.raises(StrategyError):
        DifferentiallyPrivateMean(**options)


def test_dp_mean_does_not_show_its_seed():
    assert "31337" not in repr(DifferentiallyPrivateMean(1.0, 1.0, 10, seed=31337))


def direct_epsilon(event, steps, delta):
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(delta)


def test_accountant_epsilon_is_dp_accountings_rdp_epsilon():
    sigma, q, delta = 1.1, 0.1, 1e-5
    expected = direct_epsilon(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), 100, delta
    )
    assert PrivacyAccountant(sigma, q, delta).epsilon(100) == expected


def test_accountant_with_everyone_sampled_is_the_plain_gaussian():
    expected = direct_epsilon(dp_accounting.GaussianDpEvent(2.0), 10, 1e-6)
    assert PrivacyAccountant(2.0, 1.0, 1e-6).epsilon(10) == expected


def test_accountant_epsilon_grows_with_steps():
    accountant = PrivacyAccountant(1.1, 0.1, 1e-5)
    epsilons = [accountant.epsilon(steps) for steps in (0, 1, 10, 100, 1000)]
    assert epsilons[0] == 0 and epsilons == sorted(epsilons) and len(set(epsilons)) == 5


def test_accountant_without_noise_gives_no_privacy():
    assert PrivacyAccountant(0.0, 0.1, 1e-5).epsilon(1) == math.inf
    assert PrivacyAccountant(0.0, 0.1, 1e-5).epsilon(0) == 0


def test_accountant_silences_dp_accountings_convergence_warnings(caplog):
    with caplog.at_level(logging.WARNING, logger="absl"):
        # without silencing, sigma 50 at q 0.5 logs "failed to converge" for a few orders
        assert PrivacyAccountant(50.0, 0.5, 1e-5).epsilon(100) > 0
        assert logging.getLogger("absl").level == logging.WARNING  # restored
        logging.getLogger("absl").error("a real error")
    assert [r.getMessage() for r in caplog.records] == ["a real error"]


@pytest.mark.parametrize(("sigma", "q", "delta"), [(-1, 0.1, 1e-5), (1, 0, 1e-5), (1, 0.1, 1)])
def test_accountant_refuses_bad_parameters(sigma, q, delta):
    with pytest.raises(StrategyError):
        PrivacyAccountant(sigma, q, delta)


# -- server optimizers --------------------------------------------------------------------

THETA = model([1, 2, 3, 4], [0, 0, 0])


def along(d):
    """A delta of d on every w and (-d, 0, d) on b: the step's sign and a zero coordinate."""
    return model([d] * 4, [-d, 0, d])


def test_fedavgm_accumulates_momentum():
    optimizer = FedAvgM(lr=2.0, momentum=0.5)
    # m1 = d -> theta + 2d; m2 = 0.5 d + d = 1.5 d -> + 3d: theta + 5d in all
    theta1 = optimizer.step(THETA, along(1.0))
    theta2 = optimizer.step(theta1, along(1.0))
    assert_model_equal(theta1, model([3, 4, 5, 6], [-2, 0, 2]))
    assert_model_equal(theta2, model([6, 7, 8, 9], [-5, 0, 5]))
    assert_model_equal(THETA, model([1, 2, 3, 4], [0, 0, 0]))  # the input is left alone


# lr = 1, beta1 = 0.5, beta2 = 0.75, tau = 1; deltas 2 then 3 on ``along``:
# m1 = 0.5 * 2 = 1, m2 = 0.5 * 1 + 0.5 * 3 = 2; the steps are m / (sqrt(v) + 1).
ADAPTIVE_CASES = [
    # FedAdam: v1 = 0.25 * 4 = 1, v2 = 0.75 * 1 + 0.25 * 9 = 3
    (FedAdam, 1 / (1 + 1) + 2 / (math.sqrt(3) + 1)),
    # FedYogi: v1 = 0 - 0.25 * 4 * sign(0 - 4) = 1, v2 = 1 - 0.25 * 9 * sign(1 - 9) = 3.25
    (FedYogi, 1 / (1 + 1) + 2 / (math.sqrt(3.25) + 1)),
    # FedAdagrad: v1 = 4, v2 = 4 + 9 = 13
    (FedAdagrad, 1 / (2 + 1) + 2 / (math.sqrt(13) + 1)),
]


@pytest.mark.parametrize(("optimizer_class", "moved"), ADAPTIVE_CASES)
def test_adaptive_optimizers_follow_reddi_et_al(optimizer_class, moved):
    optimizer = optimizer_class(lr=1.0, beta1=0.5, beta2=0.75, tau=1.0)
    theta = optimizer.step(optimizer.step(THETA, along(2.0)), along(3.0))
    assert_model_close(
        theta, model([1 + moved, 2 + moved, 3 + moved, 4 + moved], [-moved, 0, moved])
    )
    assert_model_equal(THETA, model([1, 2, 3, 4], [0, 0, 0]))


OPTIMIZER_CLASSES = [FedAvgM, FedAdam, FedYogi, FedAdagrad]
KERAS_TEMPLATE = {
    "w000:kernel": np.zeros((2, 2), np.float32),
    "dense/w001:bias": np.zeros(3, np.float32),
    "odd.name%2F": np.zeros(1, np.float32),
}
keras_deltas = st.fixed_dictionaries(
    {
        name: arrays(np.float32, t.shape, elements=st.floats(-5, 5, width=32))
        for name, t in KERAS_TEMPLATE.items()
    }
)


@pytest.mark.parametrize("optimizer_class", OPTIMIZER_CLASSES)
@given(steps=st.lists(keras_deltas, min_size=3, max_size=3))
def test_a_restarted_optimizer_continues_bit_for_bit(optimizer_class, steps):
    uninterrupted = optimizer_class()
    theta = dict(KERAS_TEMPLATE)
    for delta in steps[:2]:
        theta = uninterrupted.step(theta, delta)
    state = uninterrupted.state()
    assert all("/" not in key for key in state)
    assert all(a.dtype == np.float32 for a in state.values())
    restarted = optimizer_class()
    restarted.load_state({key: a.copy() for key, a in state.items()})
    assert_model_equal(restarted.step(theta, steps[2]), uninterrupted.step(theta, steps[2]))


def test_optimizer_state_keys_name_the_moment_and_the_tensor():
    optimizer = FedAdam()
    optimizer.step(KERAS_TEMPLATE, KERAS_TEMPLATE)
    assert set(optimizer.state()) == {
        f"{moment}.{key}"
        for moment in "mv"
        for key in ("w000:kernel", "dense%2Fw001:bias", "odd.name%252F")
    }


@pytest.mark.parametrize("optimizer_class", OPTIMIZER_CLASSES)
def test_loading_an_empty_state_starts_fresh(optimizer_class):
    fresh, reused = optimizer_class(), optimizer_class()
    reused.step(THETA, along(5.0))
    reused.load_state({})
    assert reused.state() == {} and fresh.state() == {}
    assert_model_equal(reused.step(THETA, along(1.0)), fresh.step(THETA, along(1.0)))


def test_an_optimizer_refuses_another_optimizers_state():
    adam = FedAdam()
    adam.step(THETA, along(1.0))
    with pytest.raises(StrategyError, match="another server optimizer"):
        FedAvgM().load_state(adam.state())


def test_an_optimizer_refuses_state_for_another_model():
    optimizer = FedAdam()
    optimizer.load_state({"m.other": np.zeros(2, np.float32), "v.other": np.zeros(2, np.float32)})
    with pytest.raises(StrategyError, match="does not fit"):
        optimizer.step(THETA, along(1.0))


@pytest.mark.parametrize(
    ("optimizer_class", "options"),
    [
        (FedAvgM, {"lr": 0}),
        (FedAvgM, {"momentum": 1.0}),
        (FedAdam, {"lr": -0.1}),
        (FedYogi, {"beta1": 1.0}),
        (FedAdagrad, {"beta2": -0.1}),
        (FedAdam, {"tau": 0}),
    ],
)
def test_optimizers_refuse_bad_rates(optimizer_class, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        optimizer_class(**options)


# -- the registry ------------------------------------------------------------------------

REQUIRED_OPTIONS = {"clipped_mean": {"clip_norm": 1.0}}


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_every_registered_aggregator_builds_and_runs_a_version(name, tmp_path):
    aggregator = build_aggregator(name, REQUIRED_OPTIONS.get(name))
    assert aggregator.name == name
    aggregator.check(5)
    update = model([0.01, 0.02, 0.03, 0.04], [0.05, 0.06, 0.07])  # norm < 1: not clipped
    result = aggregate(aggregator, [(update, 1)] * 5, tmp_path)
    assert_model_close(result, update)
    assert list(tmp_path.iterdir()) == []


def test_the_private_mean_builds_from_its_module_path_with_its_options(tmp_path):
    """Built by path, its options reach it: five unclipped updates (norm < clip_norm 1)
    summed, noised with N(0, (1.1 x 1)^2) from default_rng([seed, version]) tensor after
    tensor in the template's order, over the expected 10 updates."""
    spec = "fedq.coordinator.strategies.privacy:DifferentiallyPrivateMean"
    options = {"clip_norm": 1.0, "noise_multiplier": 1.1, "expected_updates": 10, "seed": 3}
    aggregator = build_aggregator(spec, options)
    assert isinstance(aggregator, DifferentiallyPrivateMean)
    update = model([0.01, 0.02, 0.03, 0.04], [0.05, 0.06, 0.07])
    result = aggregate(aggregator, [(update, 1)] * 5, tmp_path, version=4)
    rng = np.random.default_rng([3, 4])
    expected = {
        name: ((5 * update[name].astype(np.float64) + rng.normal(0.0, 1.1, t.shape)) / 10)
        for name, t in TEMPLATE.items()
    }
    assert_model_close(result, {n: v.astype(np.float32) for n, v in expected.items()})


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_registered_optimizer_builds(name):
    optimizer = build_optimizer(name)
    assert optimizer.name == name
    assert_model_close(optimizer.step(THETA, along(0.0)), THETA)


def test_an_unknown_strategy_is_named_in_the_error():
    with pytest.raises(StrategyError, match=r"'geomedian'.*choose one of"):
        build_aggregator("geomedian")
    with pytest.raises(StrategyError, match="'adamw'"):
        build_optimizer("adamw")


def test_a_wrong_option_is_named_in_the_error():
    with pytest.raises(StrategyError, match=r"'median'.*clip_norm"):
        build_aggregator("median", {"clip_norm": 1.0})
    with pytest.raises(StrategyError, match=r"'clipped_mean'.*clip_norm"):
        build_aggregator("clipped_mean")  # required
    with pytest.raises(StrategyError, match=r"'trimmed_mean'.*trim_fraction=0.7"):
        build_aggregator("trimmed_mean", {"trim_fraction": 0.7})
    with pytest.raises(StrategyError, match=r"'fedadam'.*beta2=1.5"):
        build_optimizer("fedadam", {"beta2": 1.5})
