"""The Python API of one role on RabbitMQ: ``fedq.run_coordinator`` and ``fedq.run_participant``.

What ``fedq coordinator`` and ``fedq participant`` do, from a script or a notebook, each
returning what it did instead of printing it: the coordinator its
:class:`~fedq.coordinator.service.FederationResult` (``final_metrics``, ``history``,
``state_dir``, as :func:`fedq.simulate`'s), a participant its
:class:`~fedq.participant.worker.ParticipantStats` (models trained, updates sent, bytes).

What must stay true, as for :func:`fedq.simulate` (:mod:`fedq.api`):

- a setting is a keyword named as the ``--config`` key of the command's flag; its value is
  checked by the command's own settings models (the very code path of the command), and a
  keyword that names no setting, or a value a setting cannot take, is one
  :class:`~fedq.api.SettingsError` before anything reaches the broker;
- the coroutines (``run_coordinator_async``, ``run_participant_async``) run on the
  caller's loop, so a notebook can run a coordinator and its participants as tasks side by
  side; the plain calls run their own loop, or one in a worker thread when the calling
  thread already runs one (:func:`~fedq.api.blocking`);
- loading the app and opening the state dir happen in worker threads, never on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedq.api import SettingsError, blocking, check_names, fields_of
from fedq.cli.coordinator import coordinate, coordinator_config
from fedq.cli.observers import ObserverSettings
from fedq.cli.participant import participants_of
from fedq.cli.running import Failure
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.result import FederationResult
from fedq.experiments.settings import Emulation
from fedq.messages.connect import open_transport
from fedq.options import Given, OptionsError
from fedq.participant.app import App, TrainConfig, load_app
from fedq.participant.config import DataSplit, ParticipantConfig
from fedq.participant.worker import ParticipantStats
from fedq.settings import settings as process_settings
from fedq.simulation import run_participants

#: ``fedq coordinator``'s settings models; ``participants`` and ``rounds`` are parameters.
COORDINATOR_MODELS = (CoordinatorConfig, ObserverSettings)
#: ``fedq participant``'s settings models; ``federation`` and ``participant_id`` are
#: parameters.
PARTICIPANT_MODELS = (ParticipantConfig, DataSplit, TrainConfig, Emulation)


def coordinator_setting_names() -> list[str]:
    """Every keyword :func:`run_coordinator` takes as a setting, sorted."""
    return fields_of(COORDINATOR_MODELS, {"participants", "rounds"})


def participant_setting_names() -> list[str]:
    """Every keyword :func:`run_participant` takes as a setting, sorted."""
    return fields_of(PARTICIPANT_MODELS, {"federation", "participant_id"})


def given_of(settings: dict[str, Any], **fixed: Any) -> Given:
    """The keywords as a command's :class:`Given`, each error naming its keyword."""
    values = settings | fixed
    return Given(values, {name: name for name in values})


def application_of(app: str | App) -> App:
    """The app itself, or the one its ``package.module:attr`` names (AppError if none)."""
    return load_app(app) if isinstance(app, str) else app


def prepare_coordinator(
    app: str | App,
    federation: str,
    participants: int,
    rounds: int,
    state_dir: str | Path | None,
    settings: dict[str, Any],
) -> tuple[CoordinatorConfig, ObserverSettings, App]:
    """The coordinator's settings, checked as ``fedq coordinator`` checks its flags, and
    its app. Blocks (it imports the app's module)."""
    check_names(
        settings, coordinator_setting_names(), "run_coordinator",
        "fedq.roles.coordinator_setting_names()",
    )  # fmt: skip
    given = given_of(settings, participants=participants, rounds=rounds)
    root = None if state_dir is None else Path(state_dir)
    try:
        config = coordinator_config(given, federation, root)
        observing = given.build(ObserverSettings)
    except (Failure, OptionsError) as exc:
        raise SettingsError(str(exc)) from None
    return config, observing, application_of(app)


async def run_coordinator_async(
    app: str | App,
    federation: str,
    participants: int,
    rounds: int,
    *,
    broker_url: str | None = None,
    state_dir: str | Path | None = None,
    observers: Sequence[CoordinatorObserver] = (),
    **settings: Any,
) -> FederationResult:
    """Run the coordinator of ``federation`` on RabbitMQ until ``rounds`` versions are
    committed from ``participants`` participants (``fedq coordinator``), and return what
    it did. Awaited, it runs on the caller's loop beside other tasks (its participants,
    in a notebook); :func:`run_coordinator` is the same as a plain call.

    ``app``: an App, or its ``package.module:attr``. ``broker_url``: default
    ``FEDQ_BROKER_URL``, else the local broker. Its checkpoints and ledger live in
    ``state_dir``/<federation> (default: ``FEDQ_STATE_DIR``, else ``fedq-state``).
    ``settings`` are ``fedq coordinator``'s flags by their ``--config`` keys (``mode``,
    ``quorum``, ``round_timeout``, ``aggregator``, ``mlflow_uri`` ...). ``observers`` are
    told of every version as it commits.
    """
    config, observing, application = await asyncio.to_thread(
        prepare_coordinator, app, federation, participants, rounds, state_dir, dict(settings)
    )
    url = broker_url or process_settings().broker_url
    return await coordinate(config, application, url, observing, observers=observers)


run_coordinator = blocking(
    run_coordinator_async,
    "run_coordinator",
    """:func:`run_coordinator_async` as a plain call: run the coordinator of
    ``federation`` on RabbitMQ until it is done, and return its
    :class:`~fedq.coordinator.service.FederationResult`. With an event loop running in
    this thread (a notebook), the coordinator runs on a loop of its own in a worker
    thread, and this call waits for it.""",
)


def prepare_participant(
    app: str | App, federation: str, participant_id: str, settings: dict[str, Any]
) -> tuple[ParticipantConfig, App]:
    """The participant's settings, checked as ``fedq participant`` checks its flags, and
    its app as the emulation settings make it run. Blocks (it imports the app's module)."""
    check_names(
        settings, participant_setting_names(), "run_participant",
        "fedq.roles.participant_setting_names()",
    )  # fmt: skip
    given = given_of(settings, federation=federation, participant_id=participant_id)
    try:
        template = given.build(ParticipantConfig)
    except OptionsError as exc:
        raise SettingsError(str(exc)) from None
    application = application_of(app)  # as fedq.simulate: a wrong app is an AppError
    try:
        [config], [emulated] = participants_of(given, template, application, 1)
    except (Failure, OptionsError) as exc:
        raise SettingsError(str(exc)) from None
    return config, emulated


async def run_participant_async(
    app: str | App,
    federation: str,
    participant_id: str,
    *,
    broker_url: str | None = None,
    **settings: Any,
) -> ParticipantStats:
    """Run participant ``participant_id`` of ``federation`` on RabbitMQ until the federation is done
    (``fedq participant``), and return what it did (models trained, updates sent). Awaited,
    it runs on the caller's loop beside other tasks; :func:`run_participant` is the same
    as a plain call.

    ``settings`` are ``fedq participant``'s flags by their ``--config`` keys:
    ``partition="INDEX/COUNT"`` (its share of the data),
    ``partition_scheme``, ``update_codec``, ``epochs``, ``learning_rate`` ...
    """
    config, application = await asyncio.to_thread(
        prepare_participant, app, federation, participant_id, dict(settings)
    )
    url = broker_url or process_settings().broker_url
    async with open_transport(url) as transport:
        [stats] = await run_participants([config], [application], transport)
    return stats


run_participant = blocking(
    run_participant_async,
    "run_participant",
    """:func:`run_participant_async` as a plain call: run one participant of ``federation``
    on RabbitMQ until the federation is done, and return its
    :class:`~fedq.participant.worker.ParticipantStats`. With an event loop running in this
    thread, the participant runs on a loop of its own in a worker thread.""",
)
