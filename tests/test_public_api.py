"""``fedq`` exports the names user code needs; renaming or dropping one is a conscious
change: this list and the docs move with it."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fedq

pytestmark = [pytest.mark.processes, pytest.mark.keras]

PUBLIC = [
    "Aggregation",
    "AggregationContext",
    "Aggregator",
    "App",
    "AppError",
    "CommitTimings",
    "Coordinator",
    "CoordinatorConfig",
    "CoordinatorObserver",
    "FederationResult",
    "KerasApp",
    "Participant",
    "ParticipantConfig",
    "Partition",
    "ServerOptimizer",
    "SettingsError",
    "SimulationPlan",
    "TrainConfig",
    "TrainResult",
    "UpdateSeen",
    "VersionSummary",
    "open_transport",
    "run_participants",
    "simulate",
    "simulate_async",
    "simulate_plan",
]


def test_fedq_exports_exactly_the_public_names_and_each_resolves():
    assert fedq.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(fedq, name).__name__ == name
        assert name in dir(fedq)


def test_an_unknown_name_is_an_attribute_error():
    try:
        fedq.Nonexistent  # noqa: B018
    except AttributeError as exc:
        assert "Nonexistent" in str(exc)
    else:
        raise AssertionError("fedq.Nonexistent resolved")


def test_importing_fedq_loads_neither_tensorflow_nor_the_coordinator():
    """The names load when used: ``import fedq`` (every CLI command does) stays cheap."""
    code = (
        "import sys, fedq; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'fedq.coordinator.service') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_a_federation_runs_from_the_top_level_names_alone(tmp_path):
    from fedq.apps.synthetic import SyntheticApp

    plan = fedq.SimulationPlan(
        fedq.CoordinatorConfig(federation="f", participants=3, rounds=2, state_dir=tmp_path),
        fedq.ParticipantConfig(federation="f", participant_id="p"),
    )
    result = await fedq.simulate_plan(plan, SyntheticApp(params=8))
    assert isinstance(result, fedq.FederationResult)
    assert (result.model_version, result.updates_incorporated) == (2, 6)
