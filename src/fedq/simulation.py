"""``fedq simulate``: a coordinator and N participants in one process, as a plan.

(``fedq.simulate``, the Python API of :mod:`fedq.api`, makes the plan of its keywords.)

On the embedded broker by default (no RabbitMQ needed); with a broker URL the very same
code runs over RabbitMQ, the coordinator and the participants on separate connections.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.result import FederationResult
from fedq.coordinator.service import Coordinator
from fedq.messages.connect import open_transport
from fedq.messages.memory import MemoryBroker, MemoryTransport
from fedq.messages.transport import Transport
from fedq.participant.app import App, Partition
from fedq.participant.config import ParticipantConfig
from fedq.participant.worker import LocalUpdate, Participant, ParticipantStats
from fedq.scenario import ParticipantProfile


def simulation_name() -> str:
    """The federation name of a simulation that is given none: the time, and a random part,
    so that two started in the same second on one broker (two users, or tests side by
    side) never share queues: the first to finish tears its federation down."""
    return f"{time.strftime('sim-%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class SimulationPlan:
    coordinator: CoordinatorConfig
    #: The template: id and share are set per participant, the partition scheme kept.
    participant: ParticipantConfig
    broker_url: str | None = None
    #: Experiments only: (index, attack spec) of the malicious participants, e.g.
    #: ``((0, "scale:-10"), (1, "sign_flip"))`` (see :mod:`fedq.experiments.attacks`);
    #: every other participant is honest.
    malicious: tuple[tuple[int, str], ...] = ()
    #: By participant index: slowdown, dropout and network delay (see
    #: :mod:`fedq.scenario`); a participant without one is the plain default one.
    profiles: tuple[ParticipantProfile, ...] = ()
    #: Keys every participant's dropout draws (the scenario's seed).
    dropout_seed: int = 0


def participant_configs(plan: SimulationPlan, prefix: str = "p") -> list[ParticipantConfig]:
    """One config per participant: the template with its id and its share of the data."""
    n = plan.coordinator.participants
    scheme = plan.participant.partition.scheme
    return [
        plan.participant.model_copy(
            update={"participant_id": f"{prefix}{i}", "partition": Partition(i, n, scheme)}
        )
        for i in range(n)
    ]


def participant_apps(plan: SimulationPlan, app: App, prefix: str = "p") -> list[App]:
    """The app as each participant runs it: as its profile and attack, if any, emulate."""
    n = plan.coordinator.participants
    profiles = {p.index: p for p in plan.profiles}
    if len(profiles) != len(plan.profiles) or not set(profiles) <= set(range(n)):
        raise ValueError(f"profiles of indices {sorted(profiles)}: each once, of 0..{n - 1}")
    attacks = dict(plan.malicious)
    return [
        profiles.get(i, ParticipantProfile(i))
        .emulation(plan.dropout_seed, attacks.get(i))
        .emulate(app, f"{prefix}{i}")
        for i in range(n)
    ]


def transports(broker_url: str | None) -> tuple[Transport, Transport]:
    """(coordinator's, participants') connections to one broker."""
    if broker_url is None:
        broker = MemoryBroker()
        return MemoryTransport(broker, "coordinator"), MemoryTransport(broker, "participants")
    return open_transport(broker_url, consumers_apart=True), open_transport(broker_url)


async def run_participants(
    configs: list[ParticipantConfig],
    app: App | Sequence[App],
    transport: Transport,
    on_round: Callable[[LocalUpdate], None] | None = None,
) -> list[ParticipantStats]:
    """M virtual participants on one connection (one broker identity), sharing ``app`` or
    each running its own (``app`` a sequence, one per config). With more than one, each
    keeps consuming while it trains (see ``release_queue_while_training``)."""
    if len(configs) > 1:
        configs = [c.model_copy(update={"release_queue_while_training": False}) for c in configs]
    apps = list(app) if isinstance(app, Sequence) else [app] * len(configs)
    workers = (
        Participant(c, a, transport, on_round).run() for c, a in zip(configs, apps, strict=True)
    )
    return list(await asyncio.gather(*workers))


async def simulate_plan(
    plan: SimulationPlan,
    app: App,
    observers: Sequence[CoordinatorObserver] = (),
) -> FederationResult:
    """Run ``plan``'s federation with ``app`` (``fedq simulate`` does, and
    ``fedq.simulate`` once it made the plan of its keywords)."""
    result, _ = await simulate_with_participants(plan, app, observers)
    return result


#: The name the CLI, the tests and the benches import it by.
simulate = simulate_plan


async def simulate_with_participants(
    plan: SimulationPlan,
    app: App,
    observers: Sequence[CoordinatorObserver] = (),
    on_round: Callable[[LocalUpdate], None] | None = None,
) -> tuple[FederationResult, list[ParticipantStats]]:
    """:func:`simulate`, and what each participant did: its stats (models trained, dropped)
    once it has finished, and ``on_round`` called for every update it sent. The stats are
    empty if the participants did not finish within ``linger_seconds + 5`` of the end."""
    coordinator_transport, participant_transport = transports(plan.broker_url)
    stats: list[ParticipantStats] = []
    async with coordinator_transport, participant_transport:
        coordinator = Coordinator(plan.coordinator, app, coordinator_transport, observers)
        # Local checks first (nothing declared for a refused coordinator); declared before
        # participants start, so their joins are queued, not dropped.
        await coordinator.prepare()
        await coordinator.topology.declare_core(coordinator_transport)
        running = asyncio.create_task(coordinator.run(), name="fedq-coordinator")
        workers = asyncio.create_task(
            run_participants(
                participant_configs(plan),
                participant_apps(plan, app),
                participant_transport,
                on_round,
            ),
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
