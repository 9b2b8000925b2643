"""``fedq coordinator``: run the coordinator of one federation on RabbitMQ.

Its settings are :class:`~fedq.coordinator.config.CoordinatorConfig`, a flag, a ``FEDQ_*``
variable and a ``--config`` key per field (:mod:`fedq.options`); its state lives in
STATE_DIR/<federation>. What it did is shown live (and to the observers
:class:`~fedq.cli.observers.ObserverSettings` asks for), summed up at the end and, with
``--report``, written as JSON.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fedq import strict_json
from fedq.cli.flags import (
    AppSpec,
    BrokerUrl,
    FederationName,
    ReportPath,
    StateDirRoot,
    Verbose,
)
from fedq.cli.observers import ObserverSettings, watching
from fedq.cli.running import fail, load, run, setup_logging
from fedq.console import RoundProgress, console, print_summary
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.federation_lock import LOCK_GRACE_SECONDS
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.result import FederationResult
from fedq.coordinator.service import Coordinator
from fedq.coordinator.state_dir import StateDir, StateDirLock, check_writable
from fedq.coordinator.strategies import StrategyError
from fedq.coordinator.strategy import compose_strategy
from fedq.messages.amqp import redact
from fedq.messages.connect import open_transport
from fedq.options import Given, OptionsError, with_settings
from fedq.output import OutputSettings
from fedq.participant.app import App
from fedq.settings import settings

#: How long a standby that took over the state dir waits for the federation's lock on the
#: broker: the dead coordinator's connection goes at once if its process was killed, after
#: the heartbeat timeout (60 s by default) if its host was lost.
TAKEOVER_LOCK_SECONDS = 180.0


class CoordinatorProcess(BaseModel):
    """The process: which federation and app, which broker, where its state and report go
    (the federation's own settings are :class:`CoordinatorConfig`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    federation: FederationName
    app_spec: AppSpec
    broker_url: BrokerUrl = None
    state_dir: StateDirRoot = None
    report: ReportPath = None
    standby: bool = Field(
        False,
        description="If another coordinator holds the state dir, wait, and take over when it "
        "stops (however it stops), instead of refusing to start.",
        json_schema_extra={"flag": "--standby"},
    )
    verbose: Verbose = False


@with_settings(CoordinatorProcess, CoordinatorConfig, ObserverSettings, OutputSettings)
def coordinator_command(given: Given) -> None:
    """Run the coordinator of one federation on RabbitMQ."""
    process = given.build(CoordinatorProcess)
    federation, report = process.federation, process.report
    setup_logging(process.verbose, given.build(OutputSettings), "coordinator", federation)
    config = coordinator_config(given, federation, process.state_dir)
    check_report(report)
    application = load(process.app_spec)
    url = process.broker_url or settings().broker_url

    observing = given.build(ObserverSettings)

    async def main() -> FederationResult:
        lock, wait = None, LOCK_GRACE_SECONDS
        if process.standby:
            lock, took_over = await standing_by(config.state_dir, federation)
            wait = TAKEOVER_LOCK_SECONDS if took_over else wait
        return await coordinate(config, application, url, observing, progress, lock, wait)

    console.event(
        "coordinator_started",
        f"coordinator of {federation} ({config.mode} mode) on RabbitMQ at {redact(url)}",
        mode=config.mode,
        broker=redact(url),
        rounds=config.rounds,
        needs=config.k,
    )
    with RoundProgress(config.rounds, config.k) as progress:
        result = run(main())
    print_summary(result)
    write_report(report, result, broker=redact(url))


async def coordinate(
    config: CoordinatorConfig,
    application: App,
    url: str,
    observing: ObserverSettings,
    progress: RoundProgress | None = None,
    lock: StateDirLock | None = None,
    lock_wait: float = LOCK_GRACE_SECONDS,
    observers: Sequence[CoordinatorObserver] = (),
) -> FederationResult:
    """Run the coordinator of ``config`` on RabbitMQ at ``url`` until the federation is
    done (``fedq coordinator``, and ``fedq.run_coordinator``), watched by ``observers``
    and those ``observing`` asks for. ``lock``: the state dir's, if already held."""
    # Every local check before the broker is even reached: the state dir (writable,
    # locked, this federation's, this app's model) and its last checkpoint.
    state = await asyncio.to_thread(StateDir.open, config.state_dir, config.federation, lock)
    try:
        await asyncio.to_thread(state.restore, application, config.from_last_good)
        async with (
            open_transport(url, consumers_apart=True) as transport,
            watching(observing, config, progress, application) as watchers,
        ):
            everyone = [*observers, *watchers]
            coordinator = Coordinator(config, application, transport, everyone, state, lock_wait)
            return await coordinator.run()
    finally:
        await asyncio.to_thread(state.close)


async def standing_by(folder: Path, federation: str) -> tuple[StateDirLock, bool]:
    """The state dir's lock: at once if free, else once its holder (the active coordinator)
    is gone, however it ended (the kernel drops a killed process's lock). Says so, so
    that an operator sees which process is the standby. True if it took over from one."""
    await asyncio.to_thread(check_writable, folder)
    lock = StateDirLock(folder)
    if await asyncio.to_thread(lock.try_acquire):
        return lock, False
    holder = lock.holder()
    console.event(
        "standby",
        f"standby for {federation}: coordinator pid {holder} holds {folder}; "
        "taking over when it stops",
        holder=holder,
    )
    await lock.wait()
    console.event("taking_over", f"taking over {federation} from pid {holder}", holder=holder)
    return lock, True


def coordinator_config(
    given: Given,
    federation: str,
    state_dir: Path | None,
    defaults: dict[str, Any] | None = None,
) -> CoordinatorConfig:
    """The coordinator's settings from what it was given over the command's ``defaults``;
    its state lives in STATE_DIR/<federation>. Strategy settings are tried out here, so a
    mistake stops the command before it starts."""
    root = state_dir or settings().state_dir
    try:
        config = given.build(
            CoordinatorConfig, defaults, federation=federation, state_dir=root / federation
        )
        compose_strategy(config, dp_seed=0)
    except (OptionsError, StrategyError) as exc:
        raise fail(str(exc)) from None
    return config


def check_report(path: Path | None) -> None:
    """With ``--report``: fail now, not after the whole run, if the file cannot be written
    (its folder is made; a file that did not exist is not left behind)."""
    if path is None:
        return
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as exc:
        raise fail(_unwritable(path, exc)) from None
    if not existed:
        path.unlink(missing_ok=True)


def _unwritable(path: Path, exc: OSError) -> str:
    return f"--report {path} cannot be written ({exc.strerror or exc}): pass a path you can write"


def write_report(path: Path | None, result: FederationResult, **extra: Any) -> None:
    """With ``--report``: what the run did, as JSON (NaN and Infinity as null)."""
    if path is None:
        return
    report = asdict(result) | extra
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(strict_json.dumps(report, indent=2, default=str) + "\n")
    except OSError as exc:  # checked before the run, but the disk may have changed since
        raise fail(_unwritable(path, exc)) from None
    console.event("report_written", f"report written to {path}", path=str(path))
