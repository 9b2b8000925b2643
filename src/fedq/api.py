"""The Python API: ``fedq.simulate(app=..., participants=..., rounds=..., **settings)``.

What ``fedq simulate`` does, from a script or a notebook, returning the
:class:`~fedq.coordinator.service.FederationResult` instead of printing it: its
``final_metrics`` (the app's held-out evaluation of the last version), its ``history``
(one record per committed version, the fields of ``fedq history --json``'s ``rounds``:
both are the ledger's :meth:`~fedq.coordinator.ledger_view.LedgerView.history`) and its
``state_dir`` (the federation's folder, which ``fedq history`` and ``fedq audit`` read).

What must stay true:

- a setting is a keyword named as the ``--config`` key of ``fedq simulate``'s flag (the
  flag without ``--``, ``_`` for ``-``: ``round_timeout``, ``learning_rate``); its value
  is checked by the same settings model as the flag's, so the two never disagree. A
  keyword that names no setting is one :class:`SettingsError` naming it, before anything
  runs;
- :func:`simulate` works whether or not the calling thread runs an event loop: without
  one it runs its own (``asyncio.run``); inside one (a Jupyter cell, an ``async def``) it
  runs the federation on a new loop in a worker thread and waits for it, because a running
  loop cannot be re-entered. :func:`simulate_async` is the coroutine, for a caller that
  wants its own loop to keep running meanwhile;
- nothing here blocks the loop the federation runs on: loading the app (which may import
  TensorFlow or torch) happens in a worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import difflib
import functools
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from pydantic import BaseModel, ValidationError

from fedq.cli.experiments import describe_heterogeneity, heterogeneity, parse_malicious
from fedq.cli.observers import ObserverSettings, watching
from fedq.cli.running import Failure
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.result import FederationResult
from fedq.coordinator.strategies import StrategyError
from fedq.coordinator.strategy import compose_strategy
from fedq.mlflow_tracking import run_params
from fedq.options import Given, OptionsError, cli_fields
from fedq.participant.app import App, AppError, Partition, TrainConfig, app_train_config, load_app
from fedq.participant.config import DataSplit, ParticipantConfig
from fedq.scenario import heterogeneous
from fedq.settings import settings as process_settings
from fedq.simulation import SimulationPlan, simulate_plan, simulation_name

P = ParamSpec("P")
R = TypeVar("R")

#: The settings models whose fields are keywords, as they are ``fedq simulate``'s flags.
MODELS: tuple[type[BaseModel], ...] = (CoordinatorConfig, ObserverSettings, DataSplit, TrainConfig)
#: ``fedq simulate``'s flags that are no model's field, by keyword (``broker_url``,
#: ``federation`` and ``state_dir`` are parameters of their own).
EXPERIMENT_KEYWORDS = ("update_codec", "scenario", "slow", "delay", "dropout", "malicious")


class SettingsError(ValueError):
    """A keyword of :func:`simulate` names no setting, or a value a setting cannot take."""


def setting_names() -> list[str]:
    """Every keyword :func:`simulate` takes as a setting, sorted."""
    return sorted([*fields_of(MODELS, {"participants", "rounds"}), *EXPERIMENT_KEYWORDS])


def fields_of(models: Sequence[type[BaseModel]], apart: set[str]) -> list[str]:
    """The settings keywords of ``models``' flags, but those in ``apart``, sorted."""
    return sorted({name for model in models for name in cli_fields(model)} - apart)


def check_names(
    given: Mapping[str, Any],
    known: Sequence[str] | None = None,
    function: str = "simulate",
    listed_by: str = "fedq.api.setting_names()",
) -> None:
    """One SettingsError naming every keyword of ``fedq.<function>`` that is not ``known``
    (default: :func:`setting_names`), with the closest known one; ``listed_by`` lists them."""
    known = setting_names() if known is None else list(known)
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    hints = [
        f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
        for name in unknown
        for close in [difflib.get_close_matches(name, known, n=1)]
    ]
    command = function.removeprefix("run_")
    raise SettingsError(
        f"fedq.{function}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
        f"settings are fedq {command}'s flags without -- and with _ for - "
        f"({listed_by} lists them)"
    )


def blocking(coroutine: Callable[P, Coroutine[Any, Any, R]], name: str, doc: str) -> Callable[P, R]:
    """``coroutine`` as a plain function named ``name``: one definition of the signature
    for both forms. Without an event loop in the calling thread it runs its own
    (``asyncio.run``); inside one (a Jupyter cell, an ``async def``) it runs the coroutine
    on a new loop in a worker thread and waits for it, because a running loop cannot be
    re-entered."""

    @functools.wraps(coroutine)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        awaited = coroutine(*args, **kwargs)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(awaited)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"fedq-{name}") as pool:
            return pool.submit(asyncio.run, awaited).result()

    call.__name__ = call.__qualname__ = name
    call.__doc__ = doc
    return call


@dataclass(frozen=True)
class Prepared:
    """What a call resolved to: the plan, the app it runs, and its observers' settings."""

    plan: SimulationPlan
    app: App
    observing: ObserverSettings


def as_list(value: Any) -> list[str] | None:
    """An experiment keyword's value: one string or several, as the repeated flag takes."""
    if value is None:
        return None
    return [str(v) for v in ([value] if isinstance(value, str | int | float) else value)]


def prepare(
    app: str | App,
    participants: int,
    rounds: int,
    broker_url: str | None,
    federation: str | None,
    state_dir: str | Path | None,
    settings: dict[str, Any],
) -> Prepared:
    """The plan of one call, everything checked as ``fedq simulate`` checks its flags.

    Blocks (it imports the app's module): :func:`simulate_async` runs it in a thread."""
    check_names(settings)
    experiments = {k: settings.pop(k) for k in EXPERIMENT_KEYWORDS if k in settings}
    origins = {name: name for name in [*settings, "participants", "rounds"]}
    given = Given(dict(settings), origins)
    name = federation or simulation_name()
    root = Path(state_dir) if state_dir is not None else process_settings().state_dir
    try:
        config = given.build(
            CoordinatorConfig,
            federation=name,
            state_dir=root / name,
            participants=participants,
            rounds=rounds,
        )
        compose_strategy(config, dp_seed=0)
        application = load_app(app) if isinstance(app, str) else app
        train = train_config(given, application)
        participant = ParticipantConfig(
            federation=name,
            participant_id="p",
            partition=Partition(scheme=given.build(DataSplit).partition_scheme),
            update_codec=experiments.get("update_codec", "raw"),
            train=train,
        )
        plan = experiment_plan(config, participant, broker_url, experiments)
        return Prepared(plan, application, given.build(ObserverSettings))
    except ValidationError as exc:  # only ParticipantConfig's: the others are OptionsError
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise SettingsError(f"{field}: {error['msg'].removeprefix('Value error, ')}") from None
    except (OptionsError, StrategyError, Failure) as exc:
        raise SettingsError(str(exc)) from None


def train_config(given: Given, application: App) -> TrainConfig:
    """How the participants train: the app's ``train_config`` under the keywords given."""
    try:
        return given.build(TrainConfig, defaults=app_train_config(application).model_dump())
    except AppError as exc:  # TrainConfig's own checks: a setting's mistake
        raise SettingsError(str(exc)) from None


def experiment_plan(
    config: CoordinatorConfig,
    participant: ParticipantConfig,
    broker_url: str | None,
    experiments: dict[str, Any],
) -> SimulationPlan:
    """The plan with the experiment keywords (``scenario``, ``slow``, ``delay``,
    ``dropout``, ``malicious``) read as the flags of the same names read them."""
    n = config.participants
    attacks = parse_malicious(as_list(experiments.get("malicious")) or [], n)
    flags = {f"--{k}": as_list(experiments.get(k)) for k in ("slow", "delay", "dropout")}
    scenario = experiments.get("scenario")
    found, seed = heterogeneity(None if scenario is None else Path(scenario), flags, n)
    if heterogeneous(found):  # as fedq simulate: one line each, dropout that would stall refused
        describe_heterogeneity(config, found, seed)
    return SimulationPlan(
        config, participant, broker_url, malicious=attacks, profiles=found, dropout_seed=seed
    )


async def simulate_async(
    app: str | App = "fedq.apps.dense:app",
    participants: int = 4,
    rounds: int = 5,
    *,
    broker_url: str | None = None,
    federation: str | None = None,
    state_dir: str | Path | None = None,
    observers: Sequence[CoordinatorObserver] = (),
    **settings: Any,
) -> FederationResult:
    """Run a coordinator and ``participants`` participants of ``app`` (an App, or its
    ``package.module:attr``) for ``rounds`` versions in this process, and return what
    they did. Awaited, the caller's event loop keeps running (a live widget, other tasks)
    while the federation runs; :func:`simulate` is the same as a plain call.

    On the embedded broker, or on RabbitMQ at ``broker_url``. The federation is named
    ``federation`` (default: ``sim-<time>-<random>``) and keeps its checkpoints and ledger
    in ``state_dir``/<federation> (default: ``FEDQ_STATE_DIR``, else ``fedq-state``).
    ``settings`` are ``fedq simulate``'s flags by their ``--config`` keys: ``quorum=2``,
    ``learning_rate=0.05``, ``partition_scheme="dirichlet:0.5"``, ``aggregator="median"``.
    ``observers`` are told of every version as it commits (:class:`CoordinatorObserver`).
    """
    prepared = await asyncio.to_thread(
        prepare, app, participants, rounds, broker_url, federation, state_dir, dict(settings)
    )
    plan = prepared.plan
    params = run_params(plan.participant)
    watched = watching(prepared.observing, plan.coordinator, None, prepared.app, params)
    async with watched as watchers:
        return await simulate_plan(plan, prepared.app, [*observers, *watchers])


simulate = blocking(
    simulate_async,
    "simulate",
    """:func:`simulate_async` as a plain call, from a script or from a notebook: run a
    coordinator and ``participants`` participants of ``app`` for ``rounds`` versions in
    this process and return what they did (``final_metrics``, ``history``, ``state_dir``).

    Called with an event loop running in this thread (a notebook), the federation runs on
    a loop of its own in a worker thread, and this call waits for it.""",
)
