"""Central differential privacy in whole federations on the real RabbitMQ: every update is
clipped, and the epsilon recorded per version is what dp-accounting says."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger
from fedq.participant.config import ParticipantConfig
from fedq.simulation import SimulationPlan, simulate
from tests.conftest import BROKER_URL

pytestmark = pytest.mark.broker

PARAMS, N = 2000, 4


async def run(tmp_path: Path, federation: str, rounds: int, **dp: float):
    plan = SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=federation, participants=N, rounds=rounds, state_dir=tmp_path, **dp
        ),
        participant=ParticipantConfig(federation=federation, participant_id="p"),
        broker_url=BROKER_URL,
    )
    return await simulate(plan, SyntheticApp(params=PARAMS))  # the fixture clears the broker


async def test_every_update_is_clipped_to_the_bound(tmp_path: Path, federation: str):
    """The deltas' norms are 0.045 to 0.18; clipped to 0.01 and summed with weight 1 over
    the fixed denominator K, each is the same vector 0.01 * ones / sqrt(P): no noise, so
    the model moves by exactly that."""
    clip = 0.01
    result = await run(tmp_path, federation, 1, dp_clip=clip, dp_noise_multiplier=0.0)
    assert result.epsilon == float("inf")  # clipping alone buys no privacy
    for tensor in load_checkpoint(checkpoint_path(tmp_path / "models", 1)).values():
        np.testing.assert_allclose(tensor, clip / np.sqrt(PARAMS), rtol=1e-5)


async def test_the_epsilon_of_each_version_is_the_accountants(tmp_path: Path, federation: str):
    sigma, delta, rounds, clip = 1.1, 1e-5, 3, 0.01
    result = await run(
        tmp_path, federation, rounds, dp_clip=clip, dp_noise_multiplier=sigma, dp_delta=delta
    )
    # The noise reached the model: without it each version moves every coordinate by
    # clip / sqrt(P) (the test above); with it, by that plus a fresh N(0, (sigma x clip /
    # K)^2) draw per version. So the model less the noise-free aggregate is noise of std
    # sqrt(rounds) x sigma x clip / K (K = N here), centred: 2000 coordinates estimate
    # that std within 1.6 % (one standard error), so 10 % is over six of them.
    model = load_checkpoint(checkpoint_path(tmp_path / "models", rounds))
    flat = np.concatenate([t.reshape(-1) for t in model.values()]).astype(np.float64)
    noise = flat - rounds * clip / np.sqrt(PARAMS)
    std = np.sqrt(rounds) * sigma * clip / N
    assert np.std(noise) == pytest.approx(std, rel=0.1)
    assert abs(np.mean(noise)) < 6 * std / np.sqrt(PARAMS)
    recorded = [h.epsilon for h in UpdateLedger(tmp_path / "ledger.sqlite").history()]
    expected = []
    for versions in range(1, rounds + 1):
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(
            dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), versions)
        )
        expected.append(accountant.get_epsilon(delta))
    assert recorded == pytest.approx(expected, rel=1e-9)
    assert result.epsilon == pytest.approx(expected[-1], rel=1e-9)
    assert expected[0] < expected[1] < expected[2]
