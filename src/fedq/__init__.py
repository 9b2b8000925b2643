"""fedq: federated learning over RabbitMQ.

The names a user's code needs, importable from ``fedq`` itself, so that code written
against them survives a reorganisation of the modules behind them::

    import fedq

    result = fedq.simulate(app="fedq.apps.dense:app", participants=3, rounds=3, quorum=2)
    result.final_metrics["accuracy"], len(result.history), result.state_dir

    app = fedq.KerasApp(build_model, load_partition, load_test)
    plan = fedq.SimulationPlan(
        fedq.CoordinatorConfig(federation="f", participants=4, rounds=5, state_dir=path),
        fedq.ParticipantConfig(federation="f", participant_id="p"),
    )
    result = asyncio.run(fedq.simulate_plan(plan, app))

- your model and data: :class:`App` (the protocol), :class:`KerasApp`, :class:`Partition`,
  :class:`TrainConfig`, :class:`TrainResult`, :class:`AppError`;
- your aggregation: :class:`Aggregator`, :class:`Aggregation`, :class:`AggregationContext`,
  :class:`ServerOptimizer` (one small file each; name it ``package.module:attr``);
- watching a coordinator: :class:`CoordinatorObserver`, and what it is given
  (:class:`UpdateSeen`, :class:`CommitTimings`, :class:`VersionSummary`);
- settings, one pydantic model per role: :class:`CoordinatorConfig`,
  :class:`ParticipantConfig`;
- running: :func:`simulate` (``fedq simulate`` from Python, its flags as keywords; from a
  script or a notebook; :class:`SettingsError` for a keyword it does not know) or
  :func:`simulate_async` (the same, awaited); one role on RabbitMQ:
  :func:`run_coordinator` (``fedq coordinator``; its :class:`FederationResult`) and
  :func:`run_participant` (``fedq participant``; its :class:`ParticipantStats`), each also
  ``..._async``; :func:`simulate_plan` with a
  :class:`SimulationPlan` (one process), or a
  :class:`Coordinator` and :class:`Participant` each on a transport from
  :func:`open_transport`; :func:`run_participants` for many in one process; the outcome,
  :class:`FederationResult`.

Each name is imported when first used, so ``import fedq`` stays cheap (TensorFlow loads
only with :class:`KerasApp`'s first model). ``tests/test_public_api.py`` pins the list.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_HOMES: dict[str, str] = {
    "App": "fedq.participant.app",
    "AppError": "fedq.participant.app",
    "Partition": "fedq.participant.app",
    "TrainConfig": "fedq.participant.app",
    "TrainResult": "fedq.participant.app",
    "KerasApp": "fedq.apps.keras_app",
    "Aggregator": "fedq.coordinator.strategies",
    "Aggregation": "fedq.coordinator.strategies",
    "AggregationContext": "fedq.coordinator.strategies",
    "ServerOptimizer": "fedq.coordinator.strategies",
    "CoordinatorObserver": "fedq.coordinator.observers",
    "UpdateSeen": "fedq.coordinator.observers",
    "CommitTimings": "fedq.coordinator.observers",
    "VersionSummary": "fedq.coordinator.records",
    "CoordinatorConfig": "fedq.coordinator.config",
    "ParticipantConfig": "fedq.participant.config",
    "Coordinator": "fedq.coordinator.service",
    "FederationResult": "fedq.coordinator.service",
    "Participant": "fedq.participant.worker",
    "open_transport": "fedq.messages.connect",
    "SimulationPlan": "fedq.simulation",
    "simulate_plan": "fedq.simulation",
    "simulate": "fedq.api",
    "simulate_async": "fedq.api",
    "SettingsError": "fedq.api",
    "run_coordinator": "fedq.roles",
    "run_coordinator_async": "fedq.roles",
    "run_participant": "fedq.roles",
    "run_participant_async": "fedq.roles",
    "ParticipantStats": "fedq.participant.worker",
    "run_participants": "fedq.simulation",
}

__all__ = [
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
    "ParticipantStats",
    "Partition",
    "ServerOptimizer",
    "SettingsError",
    "SimulationPlan",
    "TrainConfig",
    "TrainResult",
    "UpdateSeen",
    "VersionSummary",
    "open_transport",
    "run_coordinator",
    "run_coordinator_async",
    "run_participant",
    "run_participant_async",
    "run_participants",
    "simulate",
    "simulate_async",
    "simulate_plan",
]

if TYPE_CHECKING:
    from fedq.api import SettingsError, simulate, simulate_async
    from fedq.apps.keras_app import KerasApp
    from fedq.coordinator.config import CoordinatorConfig
    from fedq.coordinator.observers import CommitTimings, CoordinatorObserver, UpdateSeen
    from fedq.coordinator.records import VersionSummary
    from fedq.coordinator.result import FederationResult
    from fedq.coordinator.service import Coordinator
    from fedq.coordinator.strategies import (
        Aggregation,
        AggregationContext,
        Aggregator,
        ServerOptimizer,
    )
    from fedq.messages.connect import open_transport
    from fedq.participant.app import App, AppError, Partition, TrainConfig, TrainResult
    from fedq.participant.config import ParticipantConfig
    from fedq.participant.worker import Participant, ParticipantStats
    from fedq.roles import (
        run_coordinator,
        run_coordinator_async,
        run_participant,
        run_participant_async,
    )
    from fedq.simulation import SimulationPlan, run_participants, simulate_plan


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'fedq' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
