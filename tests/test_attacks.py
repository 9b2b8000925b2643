"""Poisoning attacks for experiments: what a malicious participant sends, and what the
coordinator makes of it with the mean and with the median."""

from __future__ import annotations

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.experiments.attacks import parse_attack
from fedq.participant.config import ParticipantConfig
from fedq.simulation import SimulationPlan, simulate


def delta() -> dict[str, np.ndarray]:
    return {
        "kernel": np.array([[0.5, -1.0], [2.0, 0.0]], dtype=np.float32),
        "bias": np.array([0.25, -3.0], dtype=np.float16),
    }


def test_scale_multiplies_every_value_and_keeps_names_shapes_and_dtypes():
    forged = parse_attack("scale:-10").apply(delta())
    assert list(forged) == ["kernel", "bias"]
    np.testing.assert_array_equal(forged["kernel"], [[-5.0, 10.0], [-20.0, 0.0]])
    np.testing.assert_array_equal(forged["bias"], [-2.5, 30.0])
    assert [(a.shape, a.dtype) for a in forged.values()] == [
        ((2, 2), np.dtype(np.float32)),
        ((2,), np.dtype(np.float16)),
    ]


def test_sign_flip_negates_every_value():
    forged = parse_attack("sign_flip").apply(delta())
    np.testing.assert_array_equal(forged["kernel"], [[-0.5, 1.0], [-2.0, 0.0]])
    np.testing.assert_array_equal(forged["bias"], [-0.25, 3.0])


def test_an_attack_leaves_the_honest_delta_untouched():
    honest = delta()
    parse_attack("scale:3").apply(honest)
    np.testing.assert_array_equal(honest["kernel"], delta()["kernel"])


@pytest.mark.parametrize(
    "spec", ["", "scale", "scale:", "scale:x", "scale:inf", "scale:nan", "sign_flip:2", "flip"]
)
def test_a_bad_spec_is_refused_naming_the_valid_forms(spec):
    with pytest.raises(
        ValueError, match=r"expected scale:FACTOR \(e\.g\. scale:-10\) or sign_flip"
    ):
        parse_attack(spec)


async def committed_with_p0_scaled(tmp_path, aggregator: str) -> dict[str, np.ndarray]:
    """One round of 4 synthetic participants on the embedded broker, p0 sending -10 x its
    delta; the model it commits."""
    plan = SimulationPlan(
        coordinator=CoordinatorConfig(
            federation="attacked", participants=4, rounds=1, state_dir=tmp_path,
            aggregator=aggregator,
        ),
        participant=ParticipantConfig(federation="attacked", participant_id="p"),
        broker_url=None,
        malicious=((0, "scale:-10"),),
    )  # fmt: skip
    result = await simulate(plan, SyntheticApp(params=100))
    assert (result.updates_incorporated, result.updates_rejected) == (4, 0)
    return load_checkpoint(checkpoint_path(tmp_path / "models", 1))


def sent_deltas() -> list[float]:
    """Every value of each participant's delta as sent: p0's scaled by -10."""
    return [(-10 if i == 0 else 1) * SyntheticApp.delta_value(i) for i in range(4)]


async def test_fedavg_takes_the_scaled_delta_in_with_its_example_weight(tmp_path):
    model = await committed_with_p0_scaled(tmp_path, "mean")
    weights = [SyntheticApp.num_examples(i) for i in range(4)]
    expected = np.dot(weights, sent_deltas()) / sum(weights)  # (-10 + 4 + 9 + 16) / 10000
    assert expected == pytest.approx(0.0019)
    for tensor in model.values():
        np.testing.assert_allclose(tensor, expected, rtol=1e-5)


async def test_the_median_ignores_the_scaled_delta(tmp_path):
    model = await committed_with_p0_scaled(tmp_path, "median")
    expected = np.median(sent_deltas())  # the two middle values: 0.002 and 0.003
    assert expected == pytest.approx(0.0025)
    for tensor in model.values():
        np.testing.assert_allclose(tensor, expected, rtol=1e-5)
