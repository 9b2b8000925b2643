"""``fedq simulate``: a coordinator and N participants on this machine.

On the embedded broker unless given ``--broker``. Every coordinator flag applies; the
participants train as the training flags say, on the partition scheme asked for, and an
experiment may make some of them slow, lagging, dropping out (``--scenario``, ``--slow``,
``--delay``, ``--dropout``) or malicious (``--malicious``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from fedq.cli.coordinator import check_report, coordinator_config, write_report
from fedq.cli.experiments import describe_heterogeneity, heterogeneity, parse_malicious
from fedq.cli.flags import AppOpt, ReportOpt, StateOpt, VerboseOpt
from fedq.cli.observers import ObserverSettings, watching
from fedq.cli.running import fail, load, run, setup_logging
from fedq.cli.training import train_config
from fedq.console import RoundProgress, console, print_summary
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.result import FederationResult
from fedq.messages.amqp import redact
from fedq.mlflow_tracking import run_params
from fedq.options import Given, with_settings
from fedq.output import OutputSettings
from fedq.participant.app import Partition, TrainConfig
from fedq.participant.config import CODEC_HELP, DataSplit, ParticipantConfig, check_codec
from fedq.scenario import heterogeneous
from fedq.simulation import SimulationPlan, simulate

SimBrokerOpt = Annotated[
    str | None,
    typer.Option("--broker", help="Run on RabbitMQ at this URL instead of the embedded broker."),
]
SimFederationOpt = Annotated[
    str | None, typer.Option("--federation", help="Name (default: sim-<timestamp>).")
]
UpdateCodecOpt = Annotated[str, typer.Option("--update-codec", help=CODEC_HELP)]
ScenarioOpt = Annotated[
    Path | None,
    typer.Option(
        "--scenario",
        help="A TOML file of who is slow, drops out or lags (docs/experiments.md); "
        "--slow, --delay and --dropout change it.",
    ),
]
SlowOpt = Annotated[
    list[str] | None,
    typer.Option("--slow", help="Make participant INDEX FACTOR x slower, e.g. 3:10 (FACTOR: all)."),
]
DelayOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--delay", help="Add SECONDS to each round of participant INDEX, e.g. 3:5 (SECONDS: all)."
    ),
]
DropoutOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--dropout",
        help="Participant INDEX skips each model with probability P, e.g. 3:0.5 (P: all).",
    ),
]
MaliciousOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--malicious",
        help="Make participant INDEX send poisoned updates (experiments): INDEX:ATTACK, "
        "ATTACK scale:FACTOR or sign_flip, e.g. 0:scale:-10.",
    ),
]


@with_settings(CoordinatorConfig, ObserverSettings, DataSplit, TrainConfig, OutputSettings)
def simulate_command(
    given: Given,
    app_spec: AppOpt = "fedq.apps.dense:app",
    broker: SimBrokerOpt = None,
    federation: SimFederationOpt = None,
    state_dir: StateOpt = None,
    report: ReportOpt = None,
    update_codec: UpdateCodecOpt = "raw",
    scenario: ScenarioOpt = None,
    slow: SlowOpt = None,
    delay: DelayOpt = None,
    dropout: DropoutOpt = None,
    malicious: MaliciousOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run a coordinator and N participants on this machine (embedded broker by default).

    4 participants and 5 rounds unless told otherwise; every coordinator flag applies.
    """
    name = federation or time.strftime("sim-%Y%m%d-%H%M%S")
    setup_logging(verbose, given.build(OutputSettings), "simulate", name)
    config = coordinator_config(given, name, state_dir, {"participants": 4, "rounds": 5})
    check_report(report)
    codec = codec_of(update_codec)
    attacks = parse_malicious(malicious or [], config.participants)
    flags = {"--slow": slow, "--delay": delay, "--dropout": dropout}
    found, seed = heterogeneity(scenario, flags, config.participants)
    scheme = given.build(DataSplit).partition_scheme
    application = load(app_spec)
    participant = ParticipantConfig(
        federation=name, participant_id="p", partition=Partition(scheme=scheme),
        update_codec=codec, train=train_config(given, application),
    )  # fmt: skip
    plan = SimulationPlan(
        config, participant, broker, malicious=attacks, profiles=found, dropout_seed=seed
    )
    announce(plan)

    observing = given.build(ObserverSettings)

    async def main() -> FederationResult:
        params = run_params(participant)
        async with watching(observing, config, progress, application, params) as observers:
            return await simulate(plan, application, observers)

    with RoundProgress(config.rounds, config.k) as progress:
        result = run(main())
    print_summary(result)
    write_report(report, result, broker="embedded" if broker is None else redact(broker))


def codec_of(update_codec: str) -> str:
    try:
        return check_codec(update_codec)
    except ValueError as exc:
        raise fail(str(exc)) from None


def announce(plan: SimulationPlan) -> None:
    """What is about to run: where, how many, and every experiment's twist."""
    config, broker = plan.coordinator, plan.broker_url
    where = f"RabbitMQ at {redact(broker)}" if broker else "the embedded broker"
    console.event(
        "simulation_started",
        f"federation {config.federation}: {config.participants} participants, {config.rounds} "
        f"versions ({config.mode} mode) on {where}",
        participants=config.participants,
        rounds=config.rounds,
        mode=config.mode,
        broker=redact(broker) if broker else "embedded",
    )
    if plan.malicious:
        named = ", ".join(f"p{i} {spec}" for i, spec in plan.malicious)
        console.print(f"malicious (experiment): {named}")
    if heterogeneous(plan.profiles):
        describe_heterogeneity(config, plan.profiles, plan.dropout_seed)
