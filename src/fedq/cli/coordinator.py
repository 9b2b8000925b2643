"""``fedq coordinator``: run the coordinator of one federation on RabbitMQ.

Its settings are :class:`~fedq.coordinator.config.CoordinatorConfig`, a flag, a ``FEDQ_*``
variable and a ``--config`` key per field (:mod:`fedq.options`); its state lives in
STATE_DIR/<federation>. What it did is shown live (and to the observers
:class:`~fedq.cli.observers.ObserverSettings` asks for), summed up at the end and, with
``--report``, written as JSON.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedq import strict_json
from fedq.cli.flags import AppOpt, BrokerOpt, FederationOpt, ReportOpt, StateOpt, VerboseOpt
from fedq.cli.observers import ObserverSettings, watching
from fedq.cli.running import fail, load, run, setup_logging
from fedq.console import RoundProgress, console, print_summary
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.service import Coordinator, FederationResult
from fedq.coordinator.strategies import StrategyError
from fedq.coordinator.strategy import compose_strategy
from fedq.messages.amqp import redact
from fedq.messages.connect import open_transport
from fedq.options import Given, OptionsError, with_settings
from fedq.settings import settings


@with_settings(CoordinatorConfig, ObserverSettings)
def coordinator_command(
    given: Given,
    federation: FederationOpt,
    app_spec: AppOpt,
    broker: BrokerOpt = None,
    state_dir: StateOpt = None,
    report: ReportOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the coordinator of one federation on RabbitMQ."""
    setup_logging(verbose)
    config = coordinator_config(given, federation, state_dir)
    application = load(app_spec)
    url = broker or settings().broker_url

    observing = given.build(ObserverSettings)

    async def main() -> FederationResult:
        async with (
            open_transport(url, consumers_apart=True) as transport,
            watching(observing, federation, progress) as observers,
        ):
            return await Coordinator(config, application, transport, observers).run()

    console.print(f"coordinator of {federation} ({config.mode} mode) on RabbitMQ at {redact(url)}")
    with RoundProgress(config.rounds, config.k) as progress:
        result = run(main())
    print_summary(result)
    write_report(report, result, broker=redact(url))


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


def write_report(path: Path | None, result: FederationResult, **extra: Any) -> None:
    """With ``--report``: what the run did, as JSON (NaN and Infinity as null)."""
    if path is None:
        return
    report = asdict(result) | extra
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(strict_json.dumps(report, indent=2, default=str) + "\n")
    console.print(f"report written to {path}")
