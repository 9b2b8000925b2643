"""``fedq simulate``: a coordinator and N participants in one process.

On the embedded broker by default (no RabbitMQ needed); with a broker URL the very same
code runs over RabbitMQ, the coordinator and the participants on separate connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.service import Coordinator, FederationResult
from fedq.messages.amqp import AmqpTransport
from fedq.messages.memory import MemoryBroker, MemoryTransport
from fedq.messages.transport import Transport
from fedq.participant.app import App, Partition
from fedq.participant.worker import (
    Participant,
    ParticipantConfig,
    ParticipantStats,
    TrainedRound,
)
from fedq.scenario import ParticipantProfile


@dataclass(frozen=True)
class Straggler:
    """Participant ``index`` takes ``slowdown`` x its training time plus ``delay_seconds``
    (both, whatever its profile says)."""

    index: int
    slowdown: float = 1.0
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class SimulationPlan:
    coordinator: CoordinatorConfig
    participant: ParticipantConfig  # template: id and partition are set per participant
    broker_url: str | None = None
    stragglers: tuple[Straggler, ...] = ()
    #: Experiments only: (index, attack spec) of the malicious participants, e.g.
    #: ``((0, "scale:-10"), (1, "sign_flip"))`` (see :mod:`fedq.participant.attacks`);
    #: every other participant is honest, whatever the template's ``attack``.
    malicious: tuple[tuple[int, str], ...] = ()
    #: Per participant, by index: slowdown, dropout and network delay (see
    #: :mod:`fedq.scenario`); none: every participant is the plain default one.
    profiles: tuple[ParticipantProfile, ...] = ()
    #: Keys every participant's dropout draws (the scenario's seed).
    dropout_seed: int = 0


def participant_configs(plan: SimulationPlan, prefix: str = "p") -> list[ParticipantConfig]:
    """One config per participant: the template, its profile, then its Straggler if any."""
    n = plan.coordinator.participants
    if plan.profiles and len(plan.profiles) != n:
        raise ValueError(f"{len(plan.profiles)} profiles for {n} participants")
    profiles = {p.index: p for p in plan.profiles}
    slow = {s.index: s for s in plan.stragglers}
    attacks = dict(plan.malicious)
    configs = []
    for i in range(n):
        profile = profiles.get(i, ParticipantProfile(i))
        straggler = slow.get(i, Straggler(i, profile.slowdown, profile.delay_seconds))
        configs.append(
            replace(
                plan.participant,
                participant_id=f"{prefix}{i}",
                partition=Partition(i, n),
                slowdown=straggler.slowdown,
                delay_seconds=straggler.delay_seconds,
                dropout=profile.dropout,
                dropout_seed=plan.dropout_seed,
                attack=attacks.get(i),
            )
        )
    return configs


def transports(broker_url: str | None) -> tuple[Transport, Transport]:
    """(coordinator's, participants') connections to one broker."""
    if broker_url is None:
        broker = MemoryBroker()
        return MemoryTransport(broker, "coordinator"), MemoryTransport(broker, "participants")
    return AmqpTransport(broker_url), AmqpTransport(broker_url)


async def run_participants(
    configs: list[ParticipantConfig],
    app: App,
    transport: Transport,
    on_round: Callable[[TrainedRound], None] | None = None,
) -> list[ParticipantStats]:
    """M virtual participants on one connection (one broker identity). With more than one,
    each keeps consuming while it trains (see ``release_queue_while_training``)."""
    if len(configs) > 1:
        configs = [replace(c, release_queue_while_training=False) for c in configs]
    workers = (Participant(c, app, transport, on_round).run() for c in configs)
    return list(await asyncio.gather(*workers))


async def simulate(
    plan: SimulationPlan,
    app: App,
    observers: Sequence[CoordinatorObserver] = (),
) -> FederationResult:
    result, _ = await simulate_with_participants(plan, app, observers)
    return result


async def simulate_with_participants(
    plan: SimulationPlan,
    app: App,
    observers: Sequence[CoordinatorObserver] = (),
    on_round: Callable[[TrainedRound], None] | None = None,
) -> tuple[FederationResult, list[ParticipantStats]]:
    """:func:`simulate`, and what each participant did: its stats (models trained, dropped)
    once it has finished, and ``on_round`` called for every update it sent. The stats are
    empty if the participants did not finish within ``linger_seconds + 5`` of the end."""
    coordinator_transport, participant_transport = transports(plan.broker_url)
    stats: list[ParticipantStats] = []
    async with coordinator_transport, participant_transport:
        coordinator = Coordinator(plan.coordinator, app, coordinator_transport, observers)
        # Declared before participants start, so their joins are queued, not dropped.
        await coordinator.topology.declare_core(coordinator_transport)
        running = asyncio.create_task(coordinator.run(), name="fedq-coordinator")
        workers = asyncio.create_task(
            run_participants(participant_configs(plan), app, participant_transport, on_round),
            name="fedq-participants",
        )
        try:
            await asyncio.wait({running, workers}, return_when=asyncio.FIRST_COMPLETED)
            failure = workers.exception() if workers.done() else None
            if failure is not None:  # a participant crashed: do not wait for its quorum
                raise failure
            result = await running
            # Participants exit on federation.done; a straggler may still be mid-training.
            done, _ = await asyncio.wait({workers}, timeout=plan.coordinator.linger_seconds + 5)
            if workers in done:
                stats = workers.result()
        finally:
            for task in (running, workers):
                task.cancel()
            await asyncio.gather(running, workers, return_exceptions=True)
        await coordinator.topology.tidy(coordinator_transport)
        return result, stats
