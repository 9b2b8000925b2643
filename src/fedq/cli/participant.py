"""``fedq participant``: one participant, or ``--count`` virtual ones, on RabbitMQ.

Each waits for the newest global model, trains on its data share (``--partition
INDEX/COUNT``; with ``--count M``, the M shares from INDEX on) and sends its delta, until
the federation is done. Many in one process share one connection, one broker identity.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from fedq.cli.experiments import check_attack
from fedq.cli.flags import (
    AppOpt,
    BatchSizeOpt,
    BrokerOpt,
    CodecOpt,
    EpochsOpt,
    FederationOpt,
    KeepOptimizerOpt,
    LearningRateOpt,
    MomentumOpt,
    ProximalMuOpt,
    SchemeOpt,
    VerboseOpt,
)
from fedq.cli.running import fail, load, run, setup_logging
from fedq.cli.training import check_codec, train_config, use_scheme
from fedq.console import ParticipantProgress, console
from fedq.messages.amqp import AmqpTransport, redact
from fedq.messages.chunks import DEFAULT_CHUNK_BYTES
from fedq.participant.app import App, AppError, Partition
from fedq.participant.worker import ParticipantConfig, ParticipantStats
from fedq.settings import settings
from fedq.simulation import run_participants

IdOpt = Annotated[str, typer.Option("--id", help="This participant's id.")]
CountOpt = Annotated[
    int, typer.Option("--count", min=1, help="Run M virtual participants: <id>-0 ... <id>-(M-1).")
]
PartitionOpt = Annotated[
    str, typer.Option("--partition", help="Data share INDEX/COUNT (0-based), e.g. 2/4.")
]
ChunkBytesOpt = Annotated[
    int,
    typer.Option(
        "--chunk-bytes",
        min=1 << 16,
        max=120 << 20,
        help="Send updates larger than this many bytes in chunks of at most this size.",
    ),
]
SlowdownOpt = Annotated[
    float, typer.Option("--slowdown", min=1.0, help="Take this many times longer (experiments).")
]
DelayOpt = Annotated[
    float, typer.Option("--delay", min=0.0, help="Add this many seconds to each round.")
]
DropoutOpt = Annotated[
    float,
    typer.Option(
        "--dropout",
        min=0.0,
        help="Skip each model with this probability, below 1 (experiments; the same "
        "models in every run).",
    ),
]
AttackOpt = Annotated[
    str | None,
    typer.Option(
        "--attack",
        help="Send poisoned updates (experiments): scale:FACTOR or sign_flip; "
        "with --count, every virtual participant does.",
    ),
]
SentLogOpt = Annotated[
    Path | None,
    typer.Option(
        "--sent-log",
        help="Append a JSON line per update the broker confirmed (for fedq audit --sent-log).",
        dir_okay=False,
    ),
]


def participant_command(
    federation: FederationOpt,
    app_spec: AppOpt,
    participant_id: IdOpt,
    count: CountOpt = 1,
    partition: PartitionOpt = "0/1",
    partition_scheme: SchemeOpt = "iid",
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    learning_rate: LearningRateOpt = None,
    momentum: MomentumOpt = None,
    keep_optimizer: KeepOptimizerOpt = None,
    proximal_mu: ProximalMuOpt = None,
    codec: CodecOpt = "raw",
    chunk_bytes: ChunkBytesOpt = DEFAULT_CHUNK_BYTES,
    slowdown: SlowdownOpt = 1.0,
    delay: DelayOpt = 0.0,
    dropout: DropoutOpt = 0.0,
    attack: AttackOpt = None,
    sent_log: SentLogOpt = None,
    broker: BrokerOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run one participant (or --count virtual ones) until the federation is done."""
    setup_logging(verbose)
    first = first_partition(partition, count)
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
    template = ParticipantConfig(
        federation=federation,
        participant_id=participant_id,
        partition=first,
        train=train,
        codec=check_codec(codec),
        chunk_bytes=chunk_bytes,
        slowdown=slowdown,
        delay_seconds=delay,
        dropout=dropout,
        attack=attack,
        sent_log=sent_log,
    )
    url = broker or settings().broker_url
    console.print(f"{count} participant(s) of {federation} on RabbitMQ at {redact(url)}")
    run(participate(virtual(template, count), application, url))


def first_partition(partition: str, count: int) -> Partition:
    """``--partition INDEX/COUNT``, the first of ``count`` consecutive shares."""
    try:
        index_text, _, count_text = partition.partition("/")
        first = Partition(int(index_text), int(count_text))
    except (ValueError, AppError):
        raise fail(
            f"--partition {partition!r}: expected INDEX/COUNT with 0 <= INDEX < COUNT"
        ) from None
    if first.index + count > first.count:
        raise fail(f"--count {count} from partition {first.index} exceeds {first.count} partitions")
    return first


def virtual(template: ParticipantConfig, count: int) -> list[ParticipantConfig]:
    """``count`` participants from ``template``: ``<id>-i`` on the i-th share after its own
    (or ``template`` itself when it is one)."""
    if count == 1:
        return [template]
    first = template.partition
    return [
        replace(
            template,
            participant_id=f"{template.participant_id}-{i}",
            partition=Partition(first.index + i, first.count),
        )
        for i in range(count)
    ]


async def participate(configs: list[ParticipantConfig], application: App, url: str) -> None:
    """Run ``configs`` on one connection to ``url``, then say what each did."""
    count = len(configs)
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
        print_done(s)


def print_done(s: ParticipantStats) -> None:
    dropped = f" (dropped {s.rounds_dropped})" if s.rounds_dropped else ""
    console.print(
        f"{s.participant}: trained {s.rounds_trained} rounds{dropped}, sent "
        f"{s.updates_sent} updates; federation done"
    )
