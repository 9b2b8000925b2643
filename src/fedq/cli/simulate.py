"""``fedq simulate``: a coordinator and N participants on this machine.

On the embedded broker unless given ``--broker``. Every coordinator flag applies; the
participants train as the training flags say, on the partition scheme asked for, and an
experiment may make some of them slow, lagging, dropping out (``--scenario``, ``--slow``,
``--delay``, ``--dropout``) or malicious (``--malicious``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fedq.cli.coordinator import check_report, coordinator_config, write_report
from fedq.cli.experiments import describe_heterogeneity, heterogeneity, parse_malicious
from fedq.cli.flags import AppSpec, ReportPath, StateDirRoot, Verbose
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
from fedq.simulation import SimulationPlan, simulate, simulation_name


class SimulateSettings(BaseModel):
    """The simulation's own settings (the coordinator's and the participants' are their
    models'): flags, ``FEDQ_*`` variables or ``--config`` keys (:mod:`fedq.options`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app_spec: AppSpec = "fedq.apps.dense:app"
    broker_url: str | None = Field(
        None,
        description="Run on RabbitMQ at this URL.",
        json_schema_extra={
            "flag": "--broker",
            "env": "FEDQ_SIMULATE_BROKER",
            "shown_default": "the embedded broker",
        },
    )
    federation: str | None = Field(
        None, description="Name.", json_schema_extra={"shown_default": "sim-<time>-<random>"}
    )
    state_dir: StateDirRoot = None
    report: ReportPath = None
    update_codec: str = Field("raw", description=CODEC_HELP)
    scenario: Path | None = Field(
        None,
        description="A TOML file of who is slow, drops out or lags (docs/experiments.md); "
        "--slow, --delay and --dropout change it.",
    )
    slow: list[str] = Field(
        [], description="Make participant INDEX FACTOR x slower, e.g. 3:10 (FACTOR: all)."
    )
    delay: list[str] = Field(
        [],
        description="Add SECONDS to each round of participant INDEX, e.g. 3:5 (SECONDS: all).",
        json_schema_extra={"env": "FEDQ_SIMULATE_DELAY"},
    )
    dropout: list[str] = Field(
        [],
        description="Participant INDEX skips each model with probability P, e.g. 3:0.5 (P: all).",
        json_schema_extra={"env": "FEDQ_SIMULATE_DROPOUT"},
    )
    malicious: list[str] = Field(
        [],
        description="Make participant INDEX send poisoned updates (experiments): INDEX:ATTACK, "
        "ATTACK scale:FACTOR or sign_flip, e.g. 0:scale:-10.",
    )
    verbose: Verbose = False


@with_settings(
    SimulateSettings,
    CoordinatorConfig,
    ObserverSettings,
    DataSplit,
    TrainConfig,
    OutputSettings,
    defaults={"participants": 4, "rounds": 5},
)
def simulate_command(given: Given) -> None:
    """Run a coordinator and N participants on this machine, on an embedded broker or on
    RabbitMQ (--broker).

    Every coordinator flag applies.
    """
    options = given.build(SimulateSettings)
    broker, report = options.broker_url, options.report
    name = options.federation or simulation_name()
    setup_logging(options.verbose, given.build(OutputSettings), "simulate", name)
    config = coordinator_config(given, name, options.state_dir)
    check_report(report)
    codec = codec_of(options.update_codec)
    attacks = parse_malicious(options.malicious, config.participants)
    flags: dict[str, list[str] | None] = {
        "--slow": options.slow,
        "--delay": options.delay,
        "--dropout": options.dropout,
    }
    found, seed = heterogeneity(options.scenario, flags, config.participants)
    scheme = given.build(DataSplit).partition_scheme
    application = load(options.app_spec)
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
