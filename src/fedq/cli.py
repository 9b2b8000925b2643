"""The ``fedq`` command. Every user mistake ends in one line saying what to do (exit 2)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from fedq import strict_json
from fedq.broker_users import UsersError
from fedq.broker_users import render as render_users
from fedq.console import (
    ParticipantProgress,
    RoundProgress,
    console,
    history_table,
    print_summary,
)
from fedq.coordinator.audit import audit
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import ConfigError, CoordinatorConfig
from fedq.coordinator.ledger_schema import LedgerError
from fedq.coordinator.ledger_view import LedgerView, ledgers_under, read_histories
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.service import Coordinator, FederationResult
from fedq.coordinator.strategies import StrategyError
from fedq.coordinator.strategy import compose_strategy
from fedq.dashboard.app import DEFAULT_PORT, DashboardError, serve
from fedq.management import ManagementUnavailable, default_management_url
from fedq.messages.amqp import AmqpTransport, BrokerUnavailable, redact
from fedq.messages.codecs import CODECS, CodecError, get_codec
from fedq.messages.transport import TransportError
from fedq.metrics import PrometheusMetrics, serve_metrics
from fedq.options import OptionsError, build_config, with_coordinator_options
from fedq.participant.app import AppError, Partition, TrainConfig, load_app
from fedq.participant.attacks import parse_attack
from fedq.participant.partitions import ENV_VAR as PARTITION_ENV
from fedq.participant.partitions import Scheme
from fedq.participant.worker import ParticipantConfig
from fedq.partition_command import partition_command
from fedq.plot import PlotUnavailable, plot_history
from fedq.runtime.allocator import tune_malloc_for_large_buffers
from fedq.runtime.sent_log import read_sent
from fedq.scenario import (
    ParticipantProfile,
    Scenario,
    ScenarioError,
    describe,
    heterogeneous,
    load_scenario,
    profiles,
    with_flag,
)
from fedq.settings import settings
from fedq.simulation import SimulationPlan, run_participants, simulate
from fedq.teardown import TeardownError, teardown
from fedq.tensorboard import tensorboard_scalars

T = TypeVar("T")

app = typer.Typer(
    help="fedq: federated learning over RabbitMQ. Start with `fedq simulate --help`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
broker_app = typer.Typer(help="Check the RabbitMQ broker.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
deploy_app = typer.Typer(help="Make what a deployment needs.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


def fail(message: str) -> Failure:
    """A mistake in the command's flags: raise what this returns."""
    return Failure(message)


class Failure(Exception):
    """A run ended on a user-facing error; ``main`` prints it after every display stopped."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def run(coro: Awaitable[T]) -> T:
    """Run ``coro``; SIGINT/SIGTERM cancel it (nothing uncommitted is acked)."""

    async def main() -> T:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await task

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise Failure("interrupted; uncommitted updates stay on the broker", 130) from None
    except (AppError, BrokerUnavailable, ConfigError, LedgerError) as exc:
        raise Failure(str(exc)) from None
    except TransportError as exc:
        raise Failure(f"broker error: {exc}") from None


def setup_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else getattr(logging, settings().log_level.upper(), 30)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # The broker client logs each failed connection attempt; fedq reports them in one line.
    for client in ("aiormq", "aio_pika"):
        logging.getLogger(client).setLevel(level if verbose else logging.CRITICAL)


def load(spec: str) -> Any:
    try:
        return load_app(spec)
    except AppError as exc:
        raise fail(str(exc)) from None


def check_codec(codec: str) -> str:
    try:
        get_codec(codec)
    except CodecError:
        raise fail(
            f"unknown codec {codec!r}: choose one of {', '.join(CODECS)} or topk:FRACTION"
        ) from None
    return codec


def heterogeneity(
    scenario: Path | None, flags: dict[str, list[str] | None], n: int
) -> tuple[tuple[ParticipantProfile, ...], int]:
    """Each participant's slowdown, dropout and delay: the ``--scenario`` file's, then what
    ``--slow``, ``--delay`` and ``--dropout`` say; and the seed of the dropout draws."""
    try:
        chosen = Scenario() if scenario is None else load_scenario(scenario)
        found = profiles(chosen, n)
        for flag, values in flags.items():
            found = with_flag(found, flag, values or [])
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    return found, chosen.seed


def check_attack(flag: str, spec: str) -> str:
    try:
        parse_attack(spec)
    except ValueError as exc:
        raise fail(f"{flag}: {exc}") from None
    return spec


def parse_malicious(values: list[str], n: int) -> tuple[tuple[int, str], ...]:
    """``--malicious INDEX:ATTACK`` into (index, attack spec) pairs, one per index."""
    found: dict[int, str] = {}
    for value in values:
        index, _, spec = value.partition(":")
        try:
            i = int(index)
        except ValueError:
            raise fail(
                f"--malicious {value!r}: expected INDEX:ATTACK, e.g. 0:scale:-10 or 1:sign_flip"
            ) from None
        if not 0 <= i < n:
            raise fail(f"--malicious {value!r}: need 0 <= INDEX < {n}")
        if i in found:
            raise fail(f"--malicious {value!r}: participant {i} already has an attack")
        found[i] = check_attack(f"--malicious {value!r}", spec)
    return tuple(sorted(found.items()))


def write_report(path: Path | None, result: FederationResult, **extra: Any) -> None:
    if path is None:
        return
    report = asdict(result) | extra
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(strict_json.dumps(report, indent=2, default=str) + "\n")
    console.print(f"report written to {path}")


AppOpt = Annotated[str, typer.Option("--app", help="The app, package.module:attr.")]
BrokerOpt = Annotated[
    str | None,
    typer.Option("--broker", help="RabbitMQ URL (env FEDQ_BROKER_URL).", show_default=False),
]
StateOpt = Annotated[
    Path | None, typer.Option("--state-dir", help="Checkpoints and ledger (env FEDQ_STATE_DIR).")
]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Write a JSON report here.")]
CODEC_HELP = (
    "Tensor codec of the updates sent: raw, fp16, int8 (~4x smaller), topk (1% of the "
    "entries, ~50x smaller) or topk:FRACTION; lossy codecs carry error feedback across rounds."
)
CodecOpt = Annotated[str, typer.Option("--codec", help=CODEC_HELP)]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")]
ManagementOpt = Annotated[
    str | None,
    typer.Option(
        "--management-url",
        help="RabbitMQ's management API, which lists the queues (default: the broker's host, "
        "port 15672, the broker's login).",
        show_default=False,
    ),
]
SchemeOpt = Annotated[
    str,
    typer.Option(
        "--partition-scheme",
        help="How the shipped apps split the data: iid, dirichlet:BETA (label skew), "
        "labels:K (K labels each), quantity:BETA (size skew) or noise:SIGMA (feature noise).",
    ),
]


EpochsOpt = Annotated[
    int | None, typer.Option("--epochs", min=1, help="Local epochs per round (default: the app's).")
]
BatchSizeOpt = Annotated[
    int | None, typer.Option("--batch-size", min=1, help="Local batch size (default: the app's).")
]
LearningRateOpt = Annotated[
    float | None,
    typer.Option(
        "--learning-rate", help="The local optimizer's learning rate (default: the app's)."
    ),
]
MomentumOpt = Annotated[
    float | None,
    typer.Option("--momentum", help="The local optimizer's momentum, SGD or RMSprop only."),
]
KeepOptimizerOpt = Annotated[
    bool | None,
    typer.Option(
        "--keep-optimizer/--fresh-optimizer",
        help="Keep the local optimizer's state (momentum, moments) across rounds, or start "
        "each round with a fresh one (the default, as in NIID-Bench).",
        show_default=False,
    ),
]
ProximalMuOpt = Annotated[
    float | None,
    typer.Option("--proximal-mu", help="FedProx: pull local training toward the global model."),
]


def train_config(application: Any, **flags: Any) -> TrainConfig:
    """How participants train: the app's ``train_config`` with the flags given on top."""
    base = getattr(application, "train_config", None) or TrainConfig()
    try:
        return base.with_overrides(**flags)
    except AppError as exc:
        raise fail(str(exc)) from None


def use_scheme(scheme: str) -> None:
    """Check ``scheme`` and hand it to the apps (they read FEDQ_PARTITION when loading)."""
    try:
        Scheme.parse(scheme)
    except ValueError as exc:
        raise fail(f"--partition-scheme: {exc}") from None
    os.environ[PARTITION_ENV] = scheme


@app.command("simulate")
@with_coordinator_options
def simulate_command(
    coordinator_options: dict[str, Any],
    app_spec: AppOpt = "fedq.apps.dense:app",
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker", help="Run on RabbitMQ at this URL instead of the embedded broker."
        ),
    ] = None,
    federation: Annotated[
        str | None, typer.Option("--federation", help="Name (default: sim-<timestamp>).")
    ] = None,
    state_dir: StateOpt = None,
    report: ReportOpt = None,
    update_codec: Annotated[str, typer.Option("--update-codec", help=CODEC_HELP)] = "raw",
    partition_scheme: SchemeOpt = "iid",
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    learning_rate: LearningRateOpt = None,
    momentum: MomentumOpt = None,
    keep_optimizer: KeepOptimizerOpt = None,
    proximal_mu: ProximalMuOpt = None,
    scenario: Annotated[
        Path | None,
        typer.Option(
            "--scenario",
            help="A TOML file of who is slow, drops out or lags (docs/experiments.md); "
            "--slow, --delay and --dropout change it.",
        ),
    ] = None,
    slow: Annotated[
        list[str] | None,
        typer.Option(
            "--slow", help="Make participant INDEX FACTOR x slower, e.g. 3:10 (FACTOR: all)."
        ),
    ] = None,
    delay: Annotated[
        list[str] | None,
        typer.Option(
            "--delay",
            help="Add SECONDS to each round of participant INDEX, e.g. 3:5 (SECONDS: all).",
        ),
    ] = None,
    dropout: Annotated[
        list[str] | None,
        typer.Option(
            "--dropout",
            help="Participant INDEX skips each model with probability P, e.g. 3:0.5 (P: all).",
        ),
    ] = None,
    malicious: Annotated[
        list[str] | None,
        typer.Option(
            "--malicious",
            help="Make participant INDEX send poisoned updates (experiments): INDEX:ATTACK, "
            "ATTACK scale:FACTOR or sign_flip, e.g. 0:scale:-10.",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run a coordinator and N participants on this machine (embedded broker by default).

    4 participants and 5 rounds unless told otherwise; every coordinator flag applies.
    """
    setup_logging(verbose)
    name = federation or time.strftime("sim-%Y%m%d-%H%M%S")
    config = coordinator_config(
        name, state_dir, {"participants": 4, "rounds": 5, **coordinator_options}
    )
    plan = SimulationPlan(
        coordinator=config,
        participant=ParticipantConfig(
            federation=name,
            participant_id="p",
            codec=check_codec(update_codec),
        ),
        broker_url=broker,
        malicious=parse_malicious(malicious or [], config.participants),
    )
    found, seed = heterogeneity(
        scenario, {"--slow": slow, "--delay": delay, "--dropout": dropout}, config.participants
    )
    plan = replace(plan, profiles=found, dropout_seed=seed)
    use_scheme(partition_scheme)
    application = load(app_spec)
    train = train_config(
        application,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        momentum=momentum,
        keep_optimizer=keep_optimizer,
        proximal_mu=proximal_mu,
    )
    plan = replace(plan, participant=replace(plan.participant, train=train))
    where = f"RabbitMQ at {redact(broker)}" if broker else "the embedded broker"
    console.print(
        f"federation {name}: {config.participants} participants, {config.rounds} versions "
        f"({config.mode} mode) on {where}"
    )
    if plan.malicious:
        named = ", ".join(f"p{i} {spec}" for i, spec in plan.malicious)
        console.print(f"malicious (experiment): {named}")
    if heterogeneous(found):
        for line in describe(found):
            console.print(f"heterogeneity (seed {seed}): {line}", highlight=False)
        if any(p.dropout > 0 for p in found) and config.min_k == config.k:
            console.print(
                f"note: with dropout a version can get fewer than its {config.k} updates and "
                "then waits; set --min-quorum below K to close it at its --round-timeout"
            )

    async def main() -> FederationResult:
        async with watching(config, progress) as observers:
            return await simulate(plan, application, observers)

    with RoundProgress(config.rounds, config.k) as progress:
        result = run(main())
    print_summary(result)
    write_report(report, result, broker="embedded" if broker is None else redact(broker))


@contextlib.asynccontextmanager
async def watching(
    config: CoordinatorConfig, progress: RoundProgress
) -> AsyncIterator[list[CoordinatorObserver]]:
    """The coordinator's observers: the live view, Prometheus metrics served at /metrics
    while it runs when --metrics-port is set, TensorBoard scalars when --tensorboard-dir is."""
    observers: list[CoordinatorObserver] = [progress]
    async with contextlib.AsyncExitStack() as stack:
        if config.tensorboard_dir is not None:
            board = await stack.enter_async_context(
                tensorboard_scalars(config.tensorboard_dir, config.federation)
            )
            progress.progress.console.print(f"TensorBoard scalars in {board.directory}")
            observers.append(board)
        if config.metrics_port is not None:
            metrics = PrometheusMetrics(config.federation)
            url = await stack.enter_async_context(
                serve_metrics(metrics, config.metrics_host, config.metrics_port)
            )
            progress.progress.console.print(f"Prometheus metrics at {url}")
            observers.append(metrics)
        yield observers


def coordinator_config(
    federation: str, state_dir: Path | None, options: dict[str, Any]
) -> CoordinatorConfig:
    """The coordinator's settings from its flags; its state lives in STATE_DIR/<federation>.
    Strategy settings are tried out here, so a mistake stops the command before it starts."""
    root = state_dir or settings().state_dir
    try:
        config = build_config({**options, "federation": federation, "state_dir": root / federation})
        compose_strategy(config, dp_seed=0)
    except (OptionsError, StrategyError) as exc:
        raise fail(str(exc)) from None
    return config


@app.command("coordinator")
@with_coordinator_options
def coordinator_command(
    coordinator_options: dict[str, Any],
    federation: Annotated[str, typer.Option("--federation", help="Federation name.")],
    app_spec: AppOpt,
    broker: BrokerOpt = None,
    state_dir: StateOpt = None,
    report: ReportOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the coordinator of one federation on RabbitMQ."""
    setup_logging(verbose)
    config = coordinator_config(federation, state_dir, coordinator_options)
    application = load(app_spec)
    url = broker or settings().broker_url

    async def main() -> FederationResult:
        async with AmqpTransport(url) as transport, watching(config, progress) as observers:
            return await Coordinator(config, application, transport, observers).run()

    console.print(f"coordinator of {federation} ({config.mode} mode) on RabbitMQ at {redact(url)}")
    with RoundProgress(config.rounds, config.k) as progress:
        result = run(main())
    print_summary(result)
    write_report(report, result, broker=redact(url))


@app.command("participant")
def participant_command(
    federation: Annotated[str, typer.Option("--federation", help="Federation name.")],
    app_spec: AppOpt,
    participant_id: Annotated[str, typer.Option("--id", help="This participant's id.")],
    count: Annotated[
        int,
        typer.Option("--count", min=1, help="Run M virtual participants: <id>-0 ... <id>-(M-1)."),
    ] = 1,
    partition: Annotated[
        str, typer.Option("--partition", help="Data share INDEX/COUNT (0-based), e.g. 2/4.")
    ] = "0/1",
    partition_scheme: SchemeOpt = "iid",
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    learning_rate: LearningRateOpt = None,
    momentum: MomentumOpt = None,
    keep_optimizer: KeepOptimizerOpt = None,
    proximal_mu: ProximalMuOpt = None,
    codec: CodecOpt = "raw",
    slowdown: Annotated[
        float,
        typer.Option("--slowdown", min=1.0, help="Take this many times longer (experiments)."),
    ] = 1.0,
    delay: Annotated[
        float, typer.Option("--delay", min=0.0, help="Add this many seconds to each round.")
    ] = 0.0,
    dropout: Annotated[
        float,
        typer.Option(
            "--dropout",
            min=0.0,
            help="Skip each model with this probability, below 1 (experiments; the same "
            "models in every run).",
        ),
    ] = 0.0,
    attack: Annotated[
        str | None,
        typer.Option(
            "--attack",
            help="Send poisoned updates (experiments): scale:FACTOR or sign_flip; "
            "with --count, every virtual participant does.",
        ),
    ] = None,
    sent_log: Annotated[
        Path | None,
        typer.Option(
            "--sent-log",
            help="Append a JSON line per update the broker confirmed (for fedq audit --sent-log).",
            dir_okay=False,
        ),
    ] = None,
    broker: BrokerOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run one participant (or --count virtual ones) until the federation is done."""
    setup_logging(verbose)
    try:
        index_text, _, count_text = partition.partition("/")
        first = Partition(int(index_text), int(count_text))
    except (ValueError, AppError):
        raise fail(
            f"--partition {partition!r}: expected INDEX/COUNT with 0 <= INDEX < COUNT"
        ) from None
    if first.index + count > first.count:
        raise fail(f"--count {count} from partition {first.index} exceeds {first.count} partitions")
    if attack is not None:
        check_attack("--attack", attack)
    if dropout >= 1.0:
        raise fail(f"--dropout {dropout}: need a probability below 1")
    use_scheme(partition_scheme)
    application = load(app_spec)
    train = train_config(
        application,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        momentum=momentum,
        keep_optimizer=keep_optimizer,
        proximal_mu=proximal_mu,
    )
    configs = [
        ParticipantConfig(
            federation=federation,
            participant_id=participant_id if count == 1 else f"{participant_id}-{i}",
            partition=Partition(first.index + i, first.count),
            train=train,
            codec=check_codec(codec),
            slowdown=slowdown,
            delay_seconds=delay,
            dropout=dropout,
            attack=attack,
            sent_log=sent_log,
        )
        for i in range(count)
    ]
    url = broker or settings().broker_url

    async def main() -> None:
        amqp = AmqpTransport(url)
        async with amqp as transport:
            # Checked before any participant declares its queue: past the limit the last
            # ``consume`` is refused only after ~2,000 queues were declared and left behind.
            if count > amqp.max_consumers:
                raise fail(
                    f"--count {count}: one process holds at most {amqp.max_consumers} "
                    "participants (a channel each, within the broker's channel_max); run "
                    "several `fedq participant` processes, each with its own --id and a "
                    "share of the partitions (--partition INDEX/COUNT --count M)"
                )
            with ParticipantProgress(count) as progress:
                stats = await run_participants(configs, application, transport, progress.trained)
        for s in stats:
            dropped = f" (dropped {s.rounds_dropped})" if s.rounds_dropped else ""
            console.print(
                f"{s.participant}: trained {s.rounds_trained} rounds{dropped}, sent "
                f"{s.updates_sent} updates; federation done"
            )

    console.print(f"{count} participant(s) of {federation} on RabbitMQ at {redact(url)}")
    run(main())


@app.command("history")
def history_command(
    state_dir: StateOpt = None,
    federation: Annotated[
        str | None, typer.Option("--federation", help="Only this federation.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Also draw loss and accuracy per round into this PNG."),
    ] = None,
) -> None:
    """Print committed rounds, who was late or missing in each, and rejected updates from
    the ledger(s) under a state dir.

    DIR is either one federation's folder or the state dir holding one folder per federation.
    """
    try:
        histories = read_histories(state_dir or settings().state_dir, federation)
    except LedgerError as exc:
        raise fail(str(exc)) from None
    if plot is not None:
        try:
            plot_history([(h.federation, h.rounds) for h in histories], plot)
        except PlotUnavailable as exc:
            raise fail(str(exc)) from None
        console.print(f"plot written to {plot}")
    if as_json:
        data = [asdict(h) for h in histories]
        print(strict_json.dumps(data if len(data) > 1 else data[0], indent=2))
        return
    # stdout: the history is this command's output. Piped, a table keeps its natural width
    # (not cut to 80 columns, no cell wrapped), so its lines can be grepped.
    out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)
    for h in histories:
        title = f"federation {h.federation} ({h.state_dir})"
        out.print(history_table(h.rounds, title, h.attendance))
        for r in h.rejections:
            base = "" if r["base_version"] is None else f" on v{r['base_version']}"
            out.print(
                f"  refused while v{r['during_version']} was current: "
                f"{r['participant'] or '?'}{base}: {r['reason']}: {r['detail']}",
                highlight=False,
            )


@app.command("audit")
def audit_command(
    state_dir: StateOpt = None,
    sent_logs: Annotated[
        list[Path] | None,
        typer.Option(
            "--sent-log",
            help="A participant's --sent-log: check that each update the broker confirmed "
            "is committed or refused, not lost. Repeat for several.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Check the ledger's hash chain, every checkpoint's sha256 and that no update id
    appears twice (and, given sent logs, that no confirmed update was lost); exit status 1
    on any failure.

    DIR is either one federation's folder or the state dir holding one folder per federation.
    """
    sent = [update for log_path in sent_logs or [] for update in read_sent(log_path)]
    failed = False
    try:
        ledgers = ledgers_under(state_dir or settings().state_dir)
    except LedgerError as exc:
        raise fail(str(exc)) from None
    for path in ledgers:
        try:
            report = audit(path, sent)
        except LedgerError as exc:
            raise fail(str(exc)) from None
        checked_sent = (
            f", of the sent logs' updates {report.sent_committed} committed and "
            f"{report.sent_refused} refused"
            if sent_logs
            else ""
        )
        console.print(
            f"{path.parent}: {report.versions} versions chained (head {report.head}), "
            f"{report.checkpoints} checkpoints matching their sha256, {report.updates} "
            f"update ids each in one version{checked_sent}",
            highlight=False,
        )
        for failure in report.failures:
            console.print(f"  FAILED {failure}", style="bold red", highlight=False)
        failed = failed or not report.ok
    if failed:
        raise typer.Exit(1)
    console.print("audit passed", style="green")


app.command("partition")(partition_command)


@deploy_app.command("users")
def deploy_users_command(
    federation: Annotated[str, typer.Option("--federation", help="Federation name.")],
    participants: Annotated[
        str, typer.Option("--participants", help="N (ids p0..pN-1) or ids, comma-separated.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Write the definitions (JSON) here.")],
    env_out: Annotated[
        Path | None,
        typer.Option(
            "--env-out", help="Write the passwords here, FEDQ_PASSWORD_<USER>=... (mode 0600)."
        ),
    ] = None,
    vhost: Annotated[str, typer.Option("--vhost", help="The federation's vhost.")] = "fedq",
    template: Annotated[
        bool, typer.Option("--template", help="Disable every password login (empty hashes).")
    ] = False,
) -> None:
    """RabbitMQ definitions for one federation: a vhost, one broker user per participant
    (and for the coordinator, the dashboard and an admin) with generated passwords, and the
    permissions that confine each (load them with RabbitMQ's load_definitions). Passwords
    come from FEDQ_PASSWORD_<USER> or are generated into --env-out; never printed."""
    try:
        render_users(federation, participants, vhost, out, env_out, template)
    except UsersError as exc:
        raise fail(str(exc)) from None
    kept = f"; passwords in {env_out} (mode 0600)" if env_out else ""
    console.print(f"wrote {out}: broker users of federation {federation} in vhost {vhost}{kept}")


@app.command("export")
def export_command(
    app_spec: AppOpt,
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="The federation's folder (holds ledger.sqlite).")
    ],
    out: Annotated[Path, typer.Option("--out", help="The file to write, named *.keras.")],
    version: Annotated[
        int | None,
        typer.Option("--version", min=0, help="Which model version (default: the last committed)."),
    ] = None,
) -> None:
    """Write a committed global model to a file that keras.saving.load_model reads."""
    ledger_path = state_dir / "ledger.sqlite"
    if not ledger_path.exists():
        raise fail(f"no ledger in {state_dir}: pass the folder of one federation (STATE_DIR/F)")
    try:
        with LedgerView.open(ledger_path) as ledger:
            last = ledger.last_version()
    except LedgerError as exc:
        raise fail(str(exc)) from None
    chosen = version if version is not None else (last.version if last else 0)
    checkpoint = checkpoint_path(state_dir / "models", chosen)
    if not checkpoint.exists():
        raise fail(f"no checkpoint of model v{chosen} in {state_dir / 'models'}")
    if out.suffix != ".keras":
        raise fail(f"--out {out}: Keras saves whole models to a .keras file")
    application = load(app_spec)
    export = getattr(application, "export", None)
    if not callable(export):
        raise fail(f"app {app_spec!r} cannot export a model (it has no export(weights, path))")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        export(load_checkpoint(checkpoint), out)
    except AppError as exc:
        raise fail(str(exc)) from None
    console.print(f"model v{chosen} written to {out}")


@app.command("dashboard")
def dashboard_command(
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    state_dir: StateOpt = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port of the page.")] = (
        DEFAULT_PORT
    ),
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (0.0.0.0: every one).")
    ] = "127.0.0.1",
    verbose: VerboseOpt = False,
) -> None:
    """Serve a live page of the federations under a state dir: versions, plots,
    participants, queues and the dead-letter queue."""
    setup_logging(verbose)
    url, root = broker or settings().broker_url, state_dir or settings().state_dir
    console.print(f"dashboard of {root} on http://{host}:{port}/ (Ctrl+C stops it)")
    try:
        run(serve(root, url, management_url, host=host, port=port))
    except DashboardError as exc:
        raise fail(str(exc)) from None
    except Failure as exc:
        if exc.status != 130:
            raise
        console.print("dashboard stopped")


@app.command("teardown")
def teardown_command(
    federation: Annotated[str, typer.Option("--federation", help="Federation name.")],
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Delete even while a coordinator is running.")
    ] = False,
) -> None:
    """Delete every queue and exchange of a federation (fedq.F.*) from the broker."""
    setup_logging(verbose=False)
    url = broker or settings().broker_url
    management = management_url or default_management_url(url)
    try:
        removed = run(teardown(federation, url, management, force=force))
    except (TeardownError, ManagementUnavailable) as exc:
        raise fail(str(exc)) from None
    console.print(removed.summary(federation), highlight=False)


@broker_app.command("check")
def broker_check(broker: BrokerOpt = None) -> None:
    """Say whether RabbitMQ is reachable, and what to do if it is not."""
    setup_logging(verbose=False)
    url = broker or settings().broker_url

    async def main() -> None:
        async with AmqpTransport(url, connect_timeout=5.0):
            pass

    run(main())
    console.print(f"RabbitMQ at {redact(url)} is reachable and accepted the login")


def main() -> None:
    tune_malloc_for_large_buffers()
    try:
        app()
    except (Failure, OptionsError) as exc:
        console.print(f"[bold red]fedq:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.status if isinstance(exc, Failure) else 2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
