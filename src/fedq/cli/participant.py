"""``fedq participant``: one participant, or ``--count`` virtual ones, on RabbitMQ.

Each waits for the newest global model, trains on its data share (``--partition
INDEX/COUNT``; with ``--count M``, the M shares from INDEX on) and sends its delta, until
the federation is done. Many in one process share one connection, one broker identity.

Every flag comes from a settings model, and so does its ``FEDQ_*`` variable and
``--config`` key: who the participant is and what it sends
(:class:`~fedq.participant.config.ParticipantConfig`), the process
(:class:`ParticipantProcess`), the data split and local training (shared with ``fedq
simulate``), and what an experiment makes of it (:class:`~fedq.experiments.settings.Emulation`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fedq.cli.flags import AppSpec, BrokerUrl, Verbose
from fedq.cli.running import fail, load, run, setup_logging
from fedq.cli.training import train_config
from fedq.console import ParticipantProgress, console
from fedq.experiments.settings import Emulation
from fedq.messages.amqp import redact
from fedq.messages.connect import open_transport
from fedq.options import Given, with_settings
from fedq.output import OutputSettings
from fedq.participant.app import App, Partition, TrainConfig
from fedq.participant.config import DataSplit, ParticipantConfig
from fedq.participant.worker import ParticipantStats
from fedq.runtime.allocator import keep_model_buffers
from fedq.settings import settings
from fedq.simulation import run_participants


class ParticipantProcess(BaseModel):
    """The process: which app, how many participants, which broker, how talkative."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app_spec: AppSpec
    count: int = Field(1, ge=1, description="Run M virtual participants: <id>-0 ... <id>-(M-1).")
    broker_url: BrokerUrl = None
    verbose: Verbose = False


@with_settings(
    ParticipantConfig, ParticipantProcess, DataSplit, TrainConfig, Emulation, OutputSettings
)
def participant_command(given: Given) -> None:
    """Run one participant (or --count virtual ones) until the federation is done."""
    keep_model_buffers()
    process = given.build(ParticipantProcess)
    template = given.build(ParticipantConfig)
    output = given.build(OutputSettings)
    setup_logging(process.verbose, output, "participant", template.federation)
    first = template.partition
    if first.index + process.count > first.count:
        raise fail(
            f"--count {process.count} from partition {first.index} exceeds {first.count} partitions"
        )
    application = load(process.app_spec)
    configs, apps = participants_of(given, template, application, process.count)
    url = process.broker_url or settings().broker_url
    console.event(
        "participants_started",
        f"{process.count} participant(s) of {template.federation} on RabbitMQ at {redact(url)}",
        participant=template.participant_id,
        count=process.count,
        broker=redact(url),
    )
    run(participate(configs, apps, url))


def participants_of(
    given: Given, template: ParticipantConfig, application: App, count: int
) -> tuple[list[ParticipantConfig], list[App]]:
    """``count`` participants of ``template`` (``fedq participant``'s, and
    ``fedq.run_participant``'s): each config with its share of the data split as given and
    the training settings over the app's, and the app as the emulation given makes it run."""
    emulation = given.build(Emulation)
    scheme = given.build(DataSplit).partition_scheme
    first = template.partition
    template = template.model_copy(
        update={
            "partition": Partition(first.index, first.count, scheme),
            "train": train_config(given, application),
        }
    )
    configs = virtual(template, count)
    return configs, [emulation.emulate(application, c.participant_id) for c in configs]


def virtual(template: ParticipantConfig, count: int) -> list[ParticipantConfig]:
    """``count`` participants from ``template``: ``<id>-i`` on the i-th share after its own
    (or ``template`` itself when it is one)."""
    if count == 1:
        return [template]
    first = template.partition
    return [
        template.model_copy(
            update={
                "participant_id": f"{template.participant_id}-{i}",
                "partition": Partition(first.index + i, first.count, first.scheme),
            }
        )
        for i in range(count)
    ]


async def participate(configs: list[ParticipantConfig], apps: list[App], url: str) -> None:
    """Run ``configs`` on one connection to ``url``, then say what each did."""
    count = len(configs)
    amqp = open_transport(url)
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
            stats = await run_participants(configs, apps, transport, progress.trained)
    for s in stats:
        print_done(s)


def print_done(s: ParticipantStats) -> None:
    dropped = f" (dropped {s.rounds_dropped})" if s.rounds_dropped else ""
    console.event(
        "participant_done",
        f"{s.participant}: trained {s.rounds_trained} rounds{dropped}, sent "
        f"{s.updates_sent} updates; federation done",
        participant=s.participant,
        rounds_trained=s.rounds_trained,
        rounds_dropped=s.rounds_dropped,
        updates_sent=s.updates_sent,
    )
