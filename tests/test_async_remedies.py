"""Async mode's remedies for stragglers (``--async-remedy``) and the notice to a participant
left behind: hand-computed cases, pure (files only, no broker)."""

from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from fedq.coordinator.checkpoint import save_checkpoint
from fedq.coordinator.config import NO_STALENESS_CUTOFF, CoordinatorConfig
from fedq.coordinator.modes import AsyncMode, OpenVersion
from fedq.coordinator.records import UpdateRecord
from fedq.coordinator.remedy import Remedy, apply_remedy
from fedq.coordinator.stale_notice import StaleNotice
from fedq.coordinator.strategies import AggregationContext
from fedq.coordinator.strategies.base import WholeDelta
from fedq.coordinator.strategies.early_mean import WeightedMean
from fedq.coordinator.strategies.remedies import (
    cached_mean_step,
    calibration,
    delay_adaptive_lr,
)
from fedq.coordinator.update_cache import UpdateCache
from fedq.messages.schema import UpdateMeta

#: A model of two tensors, 3 values in all: w (2,) and b (1,).
TEMPLATE = {"w": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}


def delta(w0: float, w1: float, b: float) -> dict[str, np.ndarray]:
    return {"w": np.array([w0, w1], np.float32), "b": np.array([b], np.float32)}


def record(participant: str, examples: int, staleness: int = 0) -> UpdateRecord:
    return UpdateRecord(f"u-{participant}", participant, None, 0, examples, examples, staleness)


def config(tmp_path: Path, **settings: object) -> CoordinatorConfig:
    base: dict[str, object] = {
        "federation": "f",
        "participants": 4,
        "rounds": 5,
        "state_dir": tmp_path,
        "mode": "async",
        "quorum": 2,
    }
    return CoordinatorConfig.model_validate(base | settings)


# ------------------------------------------------------------------ the maths
@pytest.mark.parametrize(
    ("lr", "tau_max", "tau_c", "expected"),
    [
        (1.0, 0, 4, 1.0),  # fresh
        (1.0, 4, 4, 1.0),  # at the threshold: not shrunk
        (1.0, 5, 4, 0.2),  # beyond: 1 / tau_max
        (1.0, 10, 4, 0.1),
        (0.1, 5, 4, 0.1),  # min(lr, 1 / tau_max): a small lr stays
        (0.5, 8, 0, 0.125),
    ],
)
def test_the_delay_adaptive_lr_is_fadas_step(lr, tau_max, tau_c, expected):
    assert delay_adaptive_lr(lr, tau_max, tau_c) == pytest.approx(expected)


def flat(*values: float) -> list[tuple[int, np.ndarray]]:
    return [(0, np.array(values, np.float32))]


def test_calibration_on_the_initial_model_is_the_cached_mean_minus_the_contributors_entries():
    # Model and bases 0: the local models are the deltas, as in the paper.
    # cached: p0 weight 2, m0 = (1, 2); p1 weight 1, m1 = (4, -1): the sum is (6, 3) of
    # weight 3, h = (2, 1). This version: p1 (weight 3, cached) and p2 (weight 1, not).
    # h - (3 * m1 + 1 * 0) / 4 = (2 - 3, 1 + 0.75) = (-1, 1.75).
    zero = flat(0, 0)
    out = calibration(
        np.array([6, 3], np.float32), 3.0, [(3.0, flat(4, -1), zero), (1.0, None, zero)], zero
    )
    np.testing.assert_allclose(out, [-1.0, 1.75])


def test_calibration_takes_every_update_from_the_current_model():
    # Current model x = (10, 0). Cached: p0 weight 1, local model m0 = (12, 1).
    # h = m0 - x = (2, 1). This version: p0 (weight 1, base x_b = (9, 0)) and p1 (weight 1,
    # not cached, base x). v = h + (1/2) ((x_b + d0 - x) - h0) + (1/2) ((x + d1 - x) - 0),
    # and v - A (A = (d0 + d1) / 2) = h + (x_b - x) / 2 - h0 / 2
    # = (2, 1) + (-0.5, 0) - (1, 0.5) = (0.5, 0.5).
    x = flat(10, 0)
    out = calibration(
        np.array([12, 1], np.float32), 1.0, [(1.0, flat(12, 1), flat(9, 0)), (1.0, None, x)], x
    )
    np.testing.assert_allclose(out, [0.5, 0.5])


def test_calibration_with_nothing_cached_rebases_the_new_updates_only():
    # v - A = sum_S s_i (x_b_i - x): a stale update (base (1, 1), x = (3, 3)), weight 1 of 4.
    x = flat(3, 3)
    out = calibration(np.zeros(2, np.float32), 0.0, [(1.0, None, flat(1, 1)), (3.0, None, x)], x)
    np.testing.assert_allclose(out, [-0.5, -0.5])


def test_the_cached_mean_step_is_the_mean_with_the_versions_entries_in_their_places():
    # Cached: p0 weight 2, m0 = (1, 2); p1 weight 1, m1 = (4, -1): sum (6, 3) of weight 3.
    # This version: p1 again (weight 3, m = (0, 1)) and p2 (weight 1, m = (2, 2)).
    # Mean: (2 (1, 2) + 3 (0, 1) + 1 (2, 2)) / 6 = (4, 9) / 6; minus x = (1, 1).
    out = cached_mean_step(
        np.array([6, 3], np.float32),
        3.0,
        [(1.0, flat(4, -1))],
        [(3.0, flat(0, 1)), (1.0, flat(2, 2))],
        flat(1, 1),
    )
    np.testing.assert_allclose(out, [4 / 6 - 1, 9 / 6 - 1], rtol=1e-6)


def test_the_cached_mean_step_with_nothing_cached_is_the_versions_mean():
    out = cached_mean_step(
        np.zeros(2, np.float32), 0.0, [], [(1.0, flat(4, 0)), (3.0, flat(0, 4))], flat(0, 0)
    )
    np.testing.assert_allclose(out, [1, 3])


# ------------------------------------------------------------------ the cache
def cache_of(tmp_path: Path, version: int = 0) -> UpdateCache:
    """A cache whose models are all 0 (checkpoints up to v3): local models are deltas."""
    models = tmp_path / "models"
    for v in range(4):
        save_checkpoint(models, v, TEMPLATE)
    cache = UpdateCache(tmp_path / "cache", TEMPLATE, models)
    cache.restore(version)
    return cache


def stage(cache: UpdateCache, who: str, version: int, values: tuple[float, ...], weight: float):
    cache.stage(who, version, version - 1, WholeDelta(delta(*values)), weight)


def test_the_cache_keeps_each_participants_latest_update_and_their_weighted_sum(tmp_path):
    cache = cache_of(tmp_path)
    stage(cache, "p0", 1, (1, 2, 3), 2.0)
    stage(cache, "p1", 1, (4, -1, 0), 1.0)
    assert cache.weight == 0  # staged, not committed
    cache.commit()
    np.testing.assert_allclose(cache.sum, [6, 3, 6])
    assert cache.weight == 3.0
    stage(cache, "p0", 2, (0, 0, 1), 1.0)
    cache.commit()
    # p0's entry replaced: 1 * (0, 0, 1) + 1 * (4, -1, 0)
    np.testing.assert_allclose(cache.sum, [4, -1, 1])
    assert cache.weight == 2.0
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # one per participant


def test_a_restart_rebuilds_the_cache_of_the_committed_versions_only(tmp_path):
    cache = cache_of(tmp_path)
    stage(cache, "p0", 1, (1, 2, 3), 2.0)
    cache.commit()
    stage(cache, "p0", 2, (5, 5, 5), 1.0)
    stage(cache, "p1", 2, (7, 7, 7), 1.0)
    # The coordinator dies before v2 is committed: restarted at v1.
    again = cache_of(tmp_path, version=1)
    np.testing.assert_allclose(again.sum, [2, 4, 6])
    assert again.weight == 2.0 and set(again.entries) == {"p0"}
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_a_restart_after_the_commit_but_before_the_old_entry_went_keeps_the_newest(tmp_path):
    cache = cache_of(tmp_path)
    stage(cache, "p0", 1, (1, 2, 3), 2.0)
    cache.commit()
    stage(cache, "p0", 2, (5, 5, 5), 1.0)
    # v2 committed in the ledger, the process dies before cache.commit(): both files there.
    again = cache_of(tmp_path, version=2)
    np.testing.assert_allclose(again.sum, [5, 5, 5])
    assert again.entries["p0"].version == 2


def two_cached(tmp_path: Path) -> UpdateCache:
    """A cache of p0's (1, 2, 3) of weight 2 and p1's (4, -1, 0) of weight 1, bases 0."""
    cache = cache_of(tmp_path)
    stage(cache, "p0", 1, (1, 2, 3), 2.0)
    stage(cache, "p1", 1, (4, -1, 0), 1.0)
    cache.commit()
    return cache


def test_cached_remedy_makes_ca2fl_step(tmp_path):
    """v = h + sum_S n_i (delta_i - h_i) / sum_S n_i, by hand."""
    cache = two_cached(tmp_path)  # h = ((2 + 4) / 3, (4 - 1) / 3, 6 / 3) = (2, 1, 2)
    # This version: p1 sends (1, 1, 1) with weight 3, p2 (not cached) (2, 0, 4) with 1.
    mean = WeightedMean().start(
        AggregationContext(TEMPLATE, 2, 1 << 20, tmp_path / "spill", version=2)
    )
    mean.add(delta(1, 1, 1), 3.0)
    mean.add(delta(2, 0, 4), 1.0)
    out = mean.result()
    apply_remedy(
        config(tmp_path, async_remedy="cached"),
        [record("p1", 3), record("p2", 1)],
        out,
        TEMPLATE,
        1,
        cache,
    )
    # h + (3 * ((1,1,1) - (4,-1,0)) + 1 * ((2,0,4) - 0)) / 4
    #   = (2, 1, 2) + ((-9, 6, 3) + (2, 0, 4)) / 4 = (2 - 1.75, 1 + 1.5, 2 + 1.75)
    np.testing.assert_allclose(out["w"], [0.25, 2.5])
    np.testing.assert_allclose(out["b"], [3.75])


def test_cached_mean_remedy_steps_to_the_mean_of_every_latest_local_model(tmp_path):
    """The cache of the test above, the same version: its model is the example-weighted
    mean of p0's cached (1, 2, 3), p1's new (1, 1, 1) and p2's new (2, 0, 4), bases 0."""
    cache = two_cached(tmp_path)
    stage(cache, "p1", 2, (1, 1, 1), 3.0)
    stage(cache, "p2", 2, (2, 0, 4), 1.0)
    out = delta(9, 9, 9)  # the aggregation's result is replaced, whatever it was
    apply_remedy(
        config(tmp_path, async_remedy="cached_mean"),
        [record("p1", 3), record("p2", 1)],
        out,
        TEMPLATE,
        1,
        cache,
    )
    # (2 (1, 2, 3) + 3 (1, 1, 1) + 1 (2, 0, 4)) / 6 = (7, 7, 13) / 6
    np.testing.assert_allclose(out["w"], [7 / 6, 7 / 6], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [13 / 6], rtol=1e-6)


def far_local_training(steps, versions: int, reach: float = 0.95, seed: int = 0):
    """Async mode on quadratic objectives, event by event: 10 participants, participant i's
    training on model x goes 95% of the way to its optimum c_i (delta = 0.95 (c_i - x)),
    p0 to p2 take 5 time units, the others 1 (+-10%); a version of every 5 updates, each
    on the model its participant last received. ``steps(number, x, buffer)`` gives model
    ``number + 1`` from x and the buffer's (participant, base version, delta). Returns
    the distance to FedAvg's fixed point (the mean of c_i) after each version."""
    rng = np.random.default_rng(seed)
    optima = rng.normal(size=(10, 20)).astype(np.float32) * 3
    models = [np.zeros(20, np.float32)]

    def training_time(who: int) -> float:
        return (5.0 if who < 3 else 1.0) * rng.uniform(0.9, 1.1)

    queue = [(training_time(i), i, 0) for i in range(10)]
    heapq.heapify(queue)
    buffer: list[tuple[int, int, np.ndarray]] = []
    distances = []
    while len(models) <= versions:
        now, who, base = heapq.heappop(queue)
        buffer.append((who, base, reach * (optima[who] - models[base])))
        if len(buffer) == 5:
            models.append(steps(len(models) - 1, models[-1], buffer))
            distances.append(float(np.linalg.norm(models[-1] - optima.mean(axis=0))))
            buffer = []
        heapq.heappush(queue, (now + training_time(who), who, len(models) - 1))
    return distances


@pytest.mark.parametrize("remedy", ["cached", "cached_mean"])
def test_the_caching_remedies_converge_where_local_training_goes_far(tmp_path, remedy):
    """The case where CA2FL's step as published diverges (``bench/async_vs_sync.py`` saw it
    on Fashion-MNIST): deltas that are mostly the way to each participant's optimum, and
    stragglers whose cached delta stays for about 10 versions. fedq's cache, through the
    coordinator's own code (staged, then CA2FL's calibration or the cached mean against
    the checkpoints, committed), reaches FedAvg's fixed point."""
    template = {"w": np.zeros(20, np.float32)}
    models = tmp_path / "models"
    save_checkpoint(models, 0, template)
    cache = UpdateCache(tmp_path / "cache", template, models)
    cache.restore(0)

    def fedq(number: int, x: np.ndarray, buffer: list[tuple[int, int, np.ndarray]]):
        for who, base, d in buffer:
            cache.stage(f"p{who}", number + 1, base, WholeDelta({"w": d}), 1.0)
        if remedy == "cached_mean":
            step = cache.mean_step({"w": x})["w"]
        else:
            contributors = [(f"p{who}", 1.0, base) for who, base, _ in buffer]
            step = np.mean([d for _, _, d in buffer], axis=0)
            step += cache.correction(contributors, {"w": x}, number)["w"]
        new = x + step
        save_checkpoint(models, number + 1, {"w": new})
        cache.commit()
        return new

    distances = far_local_training(fedq, 150)
    assert distances[-1] < 1e-3 * distances[0]
    assert set(cache.entries) == {f"p{i}" for i in range(10)}


def test_the_published_ca2fl_step_diverges_where_local_training_goes_far():
    """What the test above guards against: the paper's step, cached deltas added as they
    came, by hand, on the same federation, ends further from the fixed point than it
    started, ten times as far (so that test would fail with it)."""
    cached: dict[int, np.ndarray] = {}

    def published(number: int, x: np.ndarray, buffer: list[tuple[int, int, np.ndarray]]):
        h = np.mean(list(cached.values()), axis=0) if cached else np.zeros_like(x)
        step = h + np.mean([d - cached.get(who, 0) for who, _, d in buffer], axis=0)
        cached.update({who: d for who, _, d in buffer})
        return x + step

    distances = far_local_training(published, 150)
    assert distances[-1] > 10 * distances[0]


def test_delay_adaptive_remedy_shrinks_the_step_by_the_stalest_update(tmp_path):
    settings = config(tmp_path, async_remedy="delay_adaptive", delay_threshold=2)
    out = delta(1, 2, 4)
    apply_remedy(
        settings,
        [record("p0", 1, staleness=1), record("p1", 1, staleness=4)],
        out,
        TEMPLATE,
        5,
        None,
    )
    np.testing.assert_allclose(out["w"], [0.25, 0.5])  # 1 / tau_max = 1 / 4
    np.testing.assert_allclose(out["b"], [1.0])
    fresh = delta(1, 2, 4)
    apply_remedy(settings, [record("p0", 1, staleness=2)], fresh, TEMPLATE, 5, None)
    np.testing.assert_allclose(fresh["w"], [1, 2])  # at tau_c: unchanged


def test_no_remedy_leaves_the_delta_alone(tmp_path):
    out = delta(1, 2, 4)
    settings = config(tmp_path, async_remedy="none")
    apply_remedy(settings, [record("p0", 1, staleness=9)], out, TEMPLATE, 9, None)
    np.testing.assert_allclose(out["w"], [1, 2])


def test_only_the_caching_remedies_make_a_cache(tmp_path):
    for remedy, made in (
        ("none", False),
        ("delay_adaptive", False),
        ("cached", True),
        ("cached_mean", True),
    ):
        kept = Remedy(config(tmp_path, async_remedy=remedy))
        kept.restore(TEMPLATE, 0)
        assert (kept.cache is not None) is made


# ---------------------------------------------------------------- the settings
def test_a_remedy_keeps_every_update_unless_max_staleness_is_given(tmp_path):
    assert config(tmp_path, async_remedy="none").staleness_cutoff == 4
    assert config(tmp_path, async_remedy="delay_adaptive").staleness_cutoff == NO_STALENESS_CUTOFF
    given = config(tmp_path, async_remedy="cached", max_staleness=30)
    assert given.staleness_cutoff == 30
    # An update 11 versions behind, as the stragglers were, is admitted.
    mode = AsyncMode(config(tmp_path, async_remedy="delay_adaptive"))
    window = OpenVersion(version=12, round=None, quorum=2, min_quorum=2, deadline_seconds=60)
    meta = UpdateMeta(federation="f", participant="p5", base_version=1, num_examples=10)
    admitted = mode.admit(window, meta)
    assert admitted.staleness == 11 and admitted.scale == pytest.approx(12**-0.5)


def test_async_mode_keeps_its_stragglers_unless_told_otherwise(tmp_path):
    """The default remedy: cached where it can calibrate (the weighted mean, no DP clip),
    else delay_adaptive; none in the round modes; one named is kept."""
    assert config(tmp_path).async_remedy == "cached_mean"
    assert config(tmp_path, aggregator="median").async_remedy == "delay_adaptive"
    assert config(tmp_path, dp_clip=1.0).async_remedy == "delay_adaptive"
    assert config(tmp_path, async_remedy="none").async_remedy == "none"
    assert config(tmp_path, mode="quorum").async_remedy == "none"
    assert config(tmp_path, mode="sync", quorum=None).async_remedy == "none"
    # What ran is in the settings themselves: dumped and read back, it stays.
    chosen = config(tmp_path, aggregator="median")
    assert CoordinatorConfig.model_validate(chosen.model_dump()).async_remedy == "delay_adaptive"


def test_the_caching_remedies_fold_without_staleness_weight(tmp_path):
    assert config(tmp_path, async_remedy="cached").staleness_factor(8) == 1.0
    assert config(tmp_path, async_remedy="cached_mean").staleness_factor(8) == 1.0
    assert config(tmp_path, async_remedy="delay_adaptive").staleness_factor(8) == pytest.approx(
        9**-0.5
    )


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"mode": "quorum", "async_remedy": "cached"}, "is for async mode"),
        ({"async_remedy": "cached", "aggregator": "median"}, "steps by the weighted mean"),
        ({"async_remedy": "cached_mean", "dp_clip": 1.0}, "steps by the weighted mean"),
    ],
)
def test_a_remedy_that_cannot_work_is_refused(tmp_path, settings, says):
    with pytest.raises(ValidationError, match=says):
        config(tmp_path, **settings)


# --------------------------------------------------------- a participant left behind
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_participant_refused_as_stale_twice_in_a_row_is_told_and_warned_once_a_minute():
    clock = Clock()
    notice = StaleNotice(after=2, warn_seconds=60, clock=clock)
    first = notice.refused("p5")
    assert not first.tell and not first.warn
    second = notice.refused("p5")
    assert second.tell and second.warn and second.streak == 2
    clock.now = 30
    notice.refused("p5")
    fourth = notice.refused("p5")
    assert fourth.tell and not fourth.warn  # told again, the warning held back
    clock.now = 61
    notice.refused("p5")
    assert notice.refused("p5").warn


def test_a_folded_update_resets_the_count():
    notice = StaleNotice(after=2)
    notice.refused("p5")
    notice.folded("p5")
    assert not notice.refused("p5").tell
    assert not notice.refused("p6").tell  # each participant counted apart


def test_a_fold_between_keeps_the_warning_held_back():
    clock = Clock()
    notice = StaleNotice(after=2, warn_seconds=60, clock=clock)
    notice.refused("p5")
    assert notice.refused("p5").warn
    notice.folded("p5")
    notice.refused("p5")
    told = notice.refused("p5")
    assert told.tell and not told.warn


def test_made_up_ids_are_forgotten_past_what_it_remembers():
    """Ids are what senders claim: a flood of them keeps at most ``remember``, dropping
    the one refused longest ago."""
    notice = StaleNotice(after=2, remember=2)
    for participant in ("p1", "p2", "p1", "p3"):  # p2 is now the oldest, then forgotten
        notice.refused(participant)
    assert notice.refused("p1").streak == 3
    assert notice.refused("p2").streak == 1
    for i in range(1000):
        notice.refused(f"made-up-{i}")
    assert len(notice._seen) == 2
