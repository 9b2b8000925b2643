"""Whole federations on the real RabbitMQ with real Keras training: the walking skeleton."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import decode_message, encode_message
from fedq.messages.schema import MESSAGE_TYPES, ModelMeta, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology
from fedq.participant.config import ParticipantConfig
from fedq.participant.model_assembly import model_queue_bytes
from fedq.simulation import SimulationPlan, simulate
from tests.conftest import BROKER_URL
from tests.helpers import (
    COORDINATOR_CONSUMERS,
    consumers_on,
    drain,
    free_port,
    metric_total,
    read_report,
    run_fedq,
    start_fedq,
    until,
    until_async,
    until_consumers,
    until_consumers_async,
)

pytestmark = [pytest.mark.broker, pytest.mark.processes, pytest.mark.keras]


def plan(
    federation: str,
    state: Path,
    participants: int = 3,
    rounds: int = 2,
    max_update_norm: float | None = None,
) -> SimulationPlan:
    return SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=federation,
            participants=participants,
            rounds=rounds,
            state_dir=state,
            max_update_norm=max_update_norm,
        ),
        participant=ParticipantConfig(federation=federation, participant_id="p"),
        broker_url=BROKER_URL,
    )


async def cleanup(federation: str, participants: list[str]) -> None:
    async with AmqpTransport(BROKER_URL) as transport:
        await Topology(federation).delete(transport, participants)


def simulate_report(tmp_path: Path, federation: str, *args: str) -> dict[str, Any]:
    """Run `fedq simulate ARGS` as a user would and return its JSON report."""
    report = tmp_path / "report.json"
    where = ["--federation", federation, "--state-dir", str(tmp_path), "--report", str(report)]
    result = run_fedq("simulate", *args, *where)
    assert result.returncode == 0, result.stderr
    return read_report(report)


@pytest.mark.keras
@pytest.mark.parametrize("on", ["embedded", "rabbitmq"])
def test_dense_seed_example_reaches_90_percent(tmp_path, federation, on):
    broker = f" --broker {BROKER_URL}" if on == "rabbitmq" else ""
    args = f"--app fedq.apps.dense:app --participants 4 --rounds 5{broker}"
    data = simulate_report(tmp_path, federation, *args.split())
    assert data["rounds_completed"] == 5 and data["model_version"] == 5
    assert data["updates_incorporated"] == 20 and data["updates_rejected"] == 0
    assert data["final_metrics"]["accuracy"] >= 0.9
    assert set(data) >= {"federation", "duplicates", "wall_seconds", "final_metrics"}
    if on == "rabbitmq":
        asyncio.run(cleanup(federation, [f"p{i}" for i in range(4)]))


@pytest.mark.keras
def test_fashion_mnist_cnn_over_rabbitmq_reaches_75_percent(tmp_path, federation):
    args = f"--app fedq.apps.fmnist:app --participants 10 --rounds 3 --broker {BROKER_URL}"
    data = simulate_report(tmp_path, federation, *args.split())
    assert data["rounds_completed"] == 3
    assert data["final_metrics"]["accuracy"] >= 0.75
    asyncio.run(cleanup(federation, [f"p{i}" for i in range(10)]))


def hostile_bodies(federation: str, model: dict[str, np.ndarray]) -> dict[str, bytes]:
    def update(tensors: dict[str, np.ndarray]) -> bytes:
        meta = UpdateMeta(
            federation=federation, participant="mallory", round=1, base_version=0, num_examples=9
        )
        return encode_message(meta, tensors)

    wrong_shape = {k: np.zeros(v.size + 1, np.float32) for k, v in model.items()}
    with_nan = {k: np.zeros_like(v) for k, v in model.items()}
    next(iter(with_nan.values()))[0] = np.nan
    poisoned = {k: np.full_like(v, 10.0) for k, v in model.items()}  # finite, right shape
    return {
        "undecodable": b"\xc1 garbage, not msgpack \x00\xff",
        "shape_mismatch": update(wrong_shape),
        "non_finite": update(with_nan),
        "norm_exceeded": update(poisoned),
    }


async def test_garbage_wrong_shape_nan_and_poisoned_updates_go_to_the_dlq_with_their_reasons(
    tmp_path, federation
):
    app = SyntheticApp(params=1000)
    topology = Topology(federation)
    published = hostile_bodies(federation, app.initial_weights())
    async with AmqpTransport(BROKER_URL) as transport:
        await topology.declare_core(transport)
        for reason, body in published.items():
            await transport.publish(
                topology.updates,
                UPDATE_KEY,
                body,
                message_id=f"bad-{reason}",
                type=MESSAGE_TYPES["update"],
                mandatory=True,
            )
    try:
        result = await simulate(plan(federation, tmp_path, max_update_norm=1.0), app)
        assert result.rounds_completed == 2
        assert result.rejected_by_reason == {
            "non_finite": 1,
            "norm_exceeded": 1,
            "shape_mismatch": 1,
            "undecodable": 1,
        }
        assert result.updates_rejected == 4 and result.updates_incorporated == 6
        dead = await drain(BROKER_URL, topology.rejected)
        reasons = {d.message_id: str(d.headers["x-fedq-reason"]) for d in dead}
        assert {k: v.split(":")[0] for k, v in reasons.items()} == {
            "bad-undecodable": "undecodable",
            "bad-shape_mismatch": "shape_mismatch",
            "bad-non_finite": "non_finite",
            "bad-norm_exceeded": "norm_exceeded",
        }
        # Body intact: each dead letter is byte for byte what was published under its id.
        assert {d.message_id: bytes(d.body) for d in dead} == {
            f"bad-{reason}": body for reason, body in published.items()
        }
        # Exactly once: every update id is in one committed version, counted once.
        ledger = UpdateLedger(tmp_path / "ledger.sqlite")
        by_version = ledger.update_ids_by_version()
        assert len(by_version) == result.updates_incorporated
        assert sum(h.n_updates for h in ledger.history()) == len(by_version)
    finally:
        await cleanup(federation, ["p0", "p1", "p2"])


async def test_a_replayed_update_is_a_duplicate_and_other_bytes_under_its_id_conflict(
    tmp_path, federation
):
    """After a coordinator restart, a committed update comes back: the very same bytes are
    acked and counted as a duplicate, other bytes under its id are dead-lettered as
    conflicting, and neither is applied again (the ledger keeps each body's digest)."""
    app = SyntheticApp(params=1000)
    topology = Topology(federation)

    def body(index: int, round_: int, update_id: str, value: float | None = None) -> bytes:
        meta = UpdateMeta(
            federation=federation, update_id=update_id, participant=f"p{index}", round=round_,
            base_version=round_ - 1, num_examples=SyntheticApp.num_examples(index),
        )  # fmt: skip
        delta = SyntheticApp.delta_value(index) if value is None else value
        return encode_message(
            meta, {k: np.full_like(v, delta) for k, v in app.initial_weights().items()}
        )

    async def run(rounds: int, messages: list[tuple[str, bytes]]):
        config = CoordinatorConfig(
            federation=federation, participants=2, rounds=rounds, state_dir=tmp_path,
            linger_seconds=0,
        )  # fmt: skip
        async with AmqpTransport(BROKER_URL) as sender, AmqpTransport(BROKER_URL) as own:
            await topology.declare_core(sender)
            for message_id, data in messages:
                await sender.publish(
                    topology.updates, UPDATE_KEY, data, message_id=message_id, mandatory=True
                )
            return await asyncio.wait_for(Coordinator(config, app, own).run(), 60)

    first_round = [(f"r1-p{i}", body(i, 1, f"r1-p{i}")) for i in range(2)]
    try:
        first = await run(1, first_round)
        assert first.model_version == 1 and first.duplicates == 0
        replays = [first_round[0], ("r1-p1", body(1, 1, "r1-p1", value=5.0))]
        second_round = [(f"r2-p{i}", body(i, 2, f"r2-p{i}")) for i in range(2)]
        second = await run(2, replays + second_round)
        assert second.model_version == 2
        assert second.duplicates == 1
        assert second.rejected_by_reason == {"conflicting_duplicate": 1}
        assert UpdateLedger(tmp_path / "ledger.sqlite").update_ids_by_version() == {
            "r1-p0": 1, "r1-p1": 1, "r2-p0": 2, "r2-p1": 2,
        }  # fmt: skip
        [dead] = await drain(BROKER_URL, topology.rejected)
        assert bytes(dead.body) == replays[1][1]
        step = SyntheticApp.fedavg_step([0, 1])
        for tensor in load_checkpoint(checkpoint_path(tmp_path / "models", 2)).values():
            np.testing.assert_allclose(tensor, 2 * step, rtol=1e-6)
    finally:
        await cleanup(federation, [])


@pytest.mark.keras
def test_rounds_close_at_quorum_without_the_straggler_whose_updates_are_stale(tmp_path, federation):
    """One coordinator and four participant processes; p3 trains 10x slower."""
    app = ["--app", "fedq.apps.dense:app", "--federation", federation, "--broker", BROKER_URL]
    report = tmp_path / "report.json"
    shape = ["--participants", "4", "--quorum", "3", "--rounds", "3", "--linger", "120"]
    files = ["--state-dir", str(tmp_path), "--report", str(report)]
    coordinator = start_fedq("coordinator", *app, *shape, *files, log=tmp_path / "coord.log")
    # it collects: joins are answered
    until_consumers(BROKER_URL, Topology(federation).updates, COORDINATOR_CONSUMERS)

    def participant(i: int) -> subprocess.Popen[bytes]:
        slow = ["--slowdown", "10"] if i == 3 else []
        who = ["--id", f"p{i}", "--partition", f"{i}/4"]
        return start_fedq("participant", *app, *who, *slow, log=tmp_path / f"p{i}.log")

    participants = [participant(i) for i in range(4)]
    try:
        assert coordinator.wait(timeout=300) == 0, (tmp_path / "coord.log").read_text()
        for i, p in enumerate(participants):
            assert p.wait(timeout=120) == 0, (tmp_path / f"p{i}.log").read_text()
        data = read_report(report)
        assert data["rounds_completed"] == 3
        for row in data["history"]:
            assert row["closed_by"] == "quorum" and len(row["participants"]) == 3
            assert "p3" not in row["participants"]
        assert data["rejected_by_reason"].get("stale", 0) >= 1
        dead = asyncio.run(drain(BROKER_URL, Topology(federation).rejected))
        stale = [d for d in dead if str(d.headers["x-fedq-reason"]).startswith("stale:")]
        assert stale and all(d.headers["participant"] == "p3" for d in stale)
        history = run_fedq("history", "--state-dir", str(tmp_path / federation))
        assert history.returncode == 0, history.stderr
        assert "stale" in history.stdout and "p3" in history.stdout
    finally:
        for p in (coordinator, *participants):
            if p.poll() is None:
                p.kill()
        asyncio.run(cleanup(federation, [f"p{i}" for i in range(4)]))


def test_sigterm_leaves_uncommitted_updates_on_the_broker(tmp_path, federation):
    """A coordinator holding an update while it waits for quorum is stopped: the update is
    not acked, so the broker keeps it for the next coordinator."""
    args = ["--app", "fedq.apps.synthetic:app", "--participants", "2", "--rounds", "1"]
    where = ["--federation", federation, "--broker", BROKER_URL, "--state-dir", str(tmp_path)]
    metrics = free_port()
    scrape = f"http://127.0.0.1:{metrics}/metrics"
    coordinator = start_fedq(
        "coordinator", *args, *where, "--metrics-port", str(metrics),
        log=tmp_path / "coordinator.log",
    )  # fmt: skip
    topology = Topology(federation)
    update = UpdateMeta(
        federation=federation, participant="p0", round=1, base_version=0, num_examples=5
    )
    body = encode_message(
        update, {k: np.ones_like(v) for k, v in SyntheticApp().initial_weights().items()}
    )

    async def hand_over_one_update() -> None:
        await until_consumers_async(BROKER_URL, topology.updates, COORDINATOR_CONSUMERS)
        async with AmqpTransport(BROKER_URL) as transport:
            await transport.publish(
                topology.updates, UPDATE_KEY, body, message_id=update.update_id, mandatory=True
            )
            await until_async(  # the coordinator holds it (delivered, not acked)
                lambda: transport.queue_depth(topology.updates),
                lambda depth: depth == 0,
                what="the update delivered to the coordinator",
            )

    async def depth() -> int:
        async with AmqpTransport(BROKER_URL) as transport:
            return await transport.queue_depth(topology.updates)

    try:
        asyncio.run(hand_over_one_update())
        until(  # checked and held: the coordinator waits for the second update of its quorum
            lambda: metric_total(scrape, "fedq_updates_accepted_total"),
            lambda accepted: accepted == 1,
            what="the update accepted into the open version",
        )
        coordinator.terminate()
        assert coordinator.wait(timeout=30) == 143, (tmp_path / "coordinator.log").read_text()
        assert asyncio.run(depth()) == 1
        assert UpdateLedger(tmp_path / federation / "ledger.sqlite").count_updates() == 0
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
        asyncio.run(cleanup(federation, []))


def test_a_participant_holds_nothing_while_it_trains_and_rejoins_after_sigterm(
    tmp_path, federation
):
    """While it trains, a participant holds no delivery (so no training is too long for
    RabbitMQ's consumer_timeout): its model is acked and its queue not consumed. Stopped
    mid-training and restarted, it joins again: the coordinator answers a join with the
    current model, so the round is not lost."""
    topology = Topology(federation)
    app = SyntheticApp()
    model = ModelMeta(federation=federation, version=0, round=1, rounds_total=1)
    body = encode_message(model, app.initial_weights())

    async def declare() -> None:
        async with AmqpTransport(BROKER_URL) as transport:
            await topology.declare_core(transport)
            bound = model_queue_bytes(app.initial_weights())  # as the participant declares it
            await topology.declare_participant(transport, "p0", max_bytes=bound)

    async def give_the_model_and_see_it_trains() -> int:
        """Messages in its queue once it took the model and left the queue to train."""
        queue = topology.model_queue("p0")
        await until_consumers_async(BROKER_URL, queue, 1)  # started, consuming its queue
        async with AmqpTransport(BROKER_URL) as transport:
            await transport.publish(topology.models, "", body, type=MESSAGE_TYPES["model"])
            await until_async(
                lambda: consumers_on(transport, queue),
                lambda n: n == 0,
                what="p0 off its queue, training",
            )
            return await transport.queue_depth(queue)

    events: list[str] = []

    async def joins() -> int:
        """The joins from p0 in the coordinator's queue so far (taken from it)."""
        taken = await drain(BROKER_URL, topology.coordinator, quiet=0.2)
        fields = [decode_message(d.body).fields for d in taken]
        events.extend(f"{e['kind']}.{e['participant']}" for e in fields)
        return events.count("join.p0")

    asyncio.run(declare())
    args = ["--app", "fedq.apps.synthetic:app", "--id", "p0", "--delay", "60"]
    where = ["--federation", federation, "--broker", BROKER_URL]
    participant = start_fedq("participant", *args, *where, log=tmp_path / "p0.log")
    restarted = None
    try:
        assert asyncio.run(give_the_model_and_see_it_trains()) == 0, (
            tmp_path / "p0.log"
        ).read_text()
        participant.terminate()
        assert participant.wait(timeout=30) == 143, (tmp_path / "p0.log").read_text()
        restarted = start_fedq("participant", *args, *where, log=tmp_path / "p0-again.log")
        # One join at each start: the restarted one joins again.
        until(lambda: asyncio.run(joins()), lambda n: n >= 2, what="p0's second join")
        assert events.count("join.p0") == 2, events
    finally:
        for process in (participant, restarted):
            if process is not None and process.poll() is None:
                process.kill()
        asyncio.run(cleanup(federation, ["p0"]))


def kill_and_restart_the_coordinator(
    tmp_path: Path, federation: str, *strategy: str
) -> dict[str, np.ndarray]:
    """kill -9 the coordinator of a 2-participant, 4-version federation once it committed
    a version; a new one resumes from the ledger and the broker's redeliveries. Checks that
    nothing was lost or counted twice; returns the final model."""
    where = ["--federation", federation, "--broker", BROKER_URL]
    shape = ["--participants", "2", "--rounds", "4", "--state-dir", str(tmp_path), *strategy]
    app = ["--app", "fedq.apps.synthetic:app"]
    ledger = tmp_path / federation / "ledger.sqlite"

    def committed_versions() -> int:
        if not ledger.exists():
            return 0
        db = sqlite3.connect(ledger)
        try:
            return int(db.execute("SELECT COUNT(*) FROM versions").fetchone()[0])
        except sqlite3.OperationalError:  # tables not created yet
            return 0
        finally:
            db.close()

    first = start_fedq("coordinator", *app, *where, *shape, log=tmp_path / "c1.log")

    def participant(i: int) -> subprocess.Popen[bytes]:
        who = ["--id", f"p{i}", "--partition", f"{i}/2", "--delay", "1"]
        return start_fedq("participant", *app, *where, *who, log=tmp_path / f"p{i}.log")

    participants = [participant(i) for i in range(2)]
    report = tmp_path / "report.json"
    second = None
    try:
        until(committed_versions, lambda n: n >= 1, what="version 1 committed", within=120)
        first.kill()
        first.wait(timeout=10)
        killed_after = committed_versions()
        assert 1 <= killed_after < 4, (tmp_path / "c1.log").read_text()
        second = start_fedq(
            "coordinator", *app, *where, *shape, "--report", str(report),
            log=tmp_path / "c2.log",
        )  # fmt: skip
        assert second.wait(timeout=120) == 0, (tmp_path / "c2.log").read_text()
        for i, p in enumerate(participants):
            assert p.wait(timeout=60) == 0, (tmp_path / f"p{i}.log").read_text()
        data = read_report(report)
        assert data["rounds_completed"] == 4 and data["updates_incorporated"] == 8
        assert [sorted(h["participants"]) for h in data["history"]] == [["p0", "p1"]] * 4
        return load_checkpoint(checkpoint_path(tmp_path / federation / "models", 4))
    finally:
        for process in (first, second, *participants):
            if process is not None and process.poll() is None:
                process.kill()
        asyncio.run(cleanup(federation, ["p0", "p1"]))


def test_a_killed_coordinator_restarts_without_losing_or_double_counting_an_update(
    tmp_path, federation
):
    """The final model is exactly four FedAvg steps."""
    model = kill_and_restart_the_coordinator(tmp_path, federation)
    step = SyntheticApp.fedavg_step([0, 1])
    for tensor in model.values():
        np.testing.assert_allclose(tensor, 4 * step, rtol=1e-5)


def test_a_killed_coordinator_under_fedadam_ends_with_the_model_of_an_uninterrupted_run(
    tmp_path, federation
):
    """FedAdam's moments are saved with each checkpoint: the restarted coordinator goes on
    from them, so its last model is bit for bit the one of a run that was never killed."""
    fedadam = ["--server-optimizer", "fedadam", "--server-lr", "0.1"]
    killed = kill_and_restart_the_coordinator(tmp_path, federation, *fedadam)
    reference = SimulationPlan(
        coordinator=CoordinatorConfig(
            federation="reference", participants=2, rounds=4, state_dir=tmp_path / "reference",
            server_optimizer="fedadam", server_lr=0.1,
        ),
        participant=ParticipantConfig(federation="reference", participant_id="p"),
    )  # fmt: skip
    asyncio.run(simulate(reference, SyntheticApp()))
    uninterrupted = load_checkpoint(checkpoint_path(tmp_path / "reference" / "models", 4))
    fedavg = 4 * SyntheticApp.fedavg_step([0, 1])
    for name, tensor in uninterrupted.items():
        assert not np.allclose(tensor, fedavg)  # FedAdam really took other steps
        np.testing.assert_array_equal(killed[name], tensor)
