"""The broker restarted under a federation of separate `fedq` processes (a coordinator and
three participants on a RabbitMQ node of the test's own), three times per federation, both
gracefully (``rabbitmqctl stop_app`` / ``start_app``: every connection closed with
CONNECTION_FORCED) and by SIGKILL of the node booted again on the same data (durable queues
and persistent messages kept), at moments the test picks from what it observes, never
after a random sleep:

- ``collecting``: the coordinator holds 1 of the 3 updates of an open version, at three
  versions (stopped there by its ``collecting`` failpoint as it folds each version's first
  update; one participant fast, two slow and still training);
- ``committed``: the ledger's last version has just advanced (the coordinator stopped
  between its ledger commit and the acks, twice, then live), which is also when every
  participant takes the new model and releases its queue to train;
- ``training``: every participant took a model, released its queue and is about to train
  (stopped there by its ``training`` failpoint; its queue has no consumer), at three
  versions;
- ``chunked``: models and updates in 7 chunks of 64 KiB; the coordinator stopped in the
  middle of a model's fanout, a participant in the middle of publishing its update.

Where the last restart is live, the coordinator is also held short of its last version
(``last_version_held``), so that however slow the machine, the federation is still running
when the test restarts the node for the last time.

Each restart must be seen: every process had its connections before, the node went down
(all its connections went with it) and every process has new ones after. Then every
process exits 0, nothing confirmed is lost or applied twice, each version's model is the
exact FedAvg of its ledger's updates, and `fedq audit` passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from fedq.messages.amqp import AmqpTransport
from fedq.messages.topology import Topology
from tests.faults.harness import FaultyFederation
from tests.rabbit_node import RabbitNode, free_ports, rabbit_node

pytestmark = [pytest.mark.broker, pytest.mark.processes]

Kind = Literal["graceful", "kill"]
#: The participants' connections are named so (``AmqpTransport.name``); the coordinator's
#: consumers' connections add the queue's name.
CONNECTION = "fedq pid {pid}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    [port] = free_ports(1)
    config = (
        f"listeners.tcp.default = 127.0.0.1:{port}\n"
        "loopback_users = none\ndisk_free_limit.absolute = 50MB\n"
    )
    base = tmp_path_factory.mktemp("restarts-node")
    with rabbit_node(base, config, amqp_port=port, label="restarts") as started:
        yield started


def url(node: RabbitNode) -> str:
    return f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/"


def until(
    check: Callable[[], bool],
    what: str,
    fed: FaultyFederation,
    within: float = 90,
    seen: Callable[[], object] = lambda: "",
) -> None:
    """Return once ``check()`` holds; fail with what was ``seen`` last and every process's
    log if it does not ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {within} s {seen()}\n{fed.logs()}"
        time.sleep(0.05)


def stopped(process: subprocess.Popen[bytes]) -> bool:
    """Whether ``process`` is stopped (SIGSTOP, by its failpoint)."""
    try:
        stat = Path(f"/proc/{process.pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"


@dataclass
class Restarts:
    """A federation on ``node`` and the restarts done under it."""

    node: RabbitNode
    fed: FaultyFederation
    coordinator: subprocess.Popen[bytes] | None = None
    participants: list[subprocess.Popen[bytes]] = field(default_factory=list)
    done: list[Kind] = field(default_factory=list)

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        assert self.coordinator is not None
        return [self.coordinator, *self.participants]

    def connections(self) -> dict[int, set[tuple[int, int]]]:
        """Per process of the federation, its connections to the node, each as (client
        port, the node's time of connecting in ms): a port alone may be taken again by the
        connection that replaces one the broker closed (the broker closed first, so the
        client's socket did not linger in TIME_WAIT; a run of the suite saw it happen)."""
        rows = json.loads(
            self.node.rabbitmqctl(
                "list_connections",
                "peer_port",
                "connected_at",
                "client_properties",
                "--formatter",
                "json",
            )
            or "[]"
        )
        found: dict[int, set[tuple[int, int]]] = {p.pid: set() for p in self.processes}
        for row in rows:
            # A connection still opening lists its properties as a plain string: no name yet.
            properties = row["client_properties"]
            entries = properties if isinstance(properties, list) else []
            name = next((e[2] for e in entries if len(e) == 3 and e[0] == "connection_name"), "")
            for pid in found:
                if name == CONNECTION.format(pid=pid) or name.startswith(
                    CONNECTION.format(pid=pid) + " "
                ):
                    found[pid].add((int(row["peer_port"]), int(row["connected_at"])))
        return found

    def alive(self) -> None:
        """Every process runs, or the test fails with every log. None may end on its own
        before a restart: at each restart's moment a failpoint stops the federation (the
        coordinator, or the participants it waits for), or where the moment is live, holds
        the coordinator short of its last version (``last_version_held``)."""
        for process in self.processes:
            if process.poll() is not None:
                raise AssertionError(f"pid {process.pid} exited\n{self.fed.logs()}")

    def restart(self, kind: Kind) -> None:
        """Restart the node under the federation; resume the processes its failpoints
        stopped; check that every process lost its connections and made new ones.

        The federation is not done when the node goes down, so a process that ends (0)
        before it is seen connected again did reconnect: a participant heard
        federation.done, the coordinator committed its last version, after the restart."""
        self.alive()
        before: dict[int, set[tuple[int, int]]] = {}

        def connected() -> bool:
            self.alive()
            before.update(self.connections())
            return all(before.values())

        until(connected, "every process connected before the restart", self.fed)
        assert self.fed.committed_version() < self.fed.rounds, self.fed.logs()
        if kind == "graceful":
            self.node.restart_app()
        else:
            self.node.reboot()
        self.release()
        after: dict[int, set[tuple[int, int]]] = {}

        def reconnected() -> bool:
            after.update(self.connections())
            for process in self.processes:
                code = process.poll()
                assert code in (None, 0), f"pid {process.pid} exited {code}\n{self.fed.logs()}"
                if code == 0:
                    after.pop(process.pid, None)
            return all(len(after[pid]) >= len(before[pid]) for pid in after)

        until(
            reconnected,
            f"every process reconnected after restart {kind}",
            self.fed,
            seen=lambda: f"before {before}, after {after}, pids {[p.pid for p in self.processes]}",
        )
        for pid, connections in after.items():
            assert not connections & before[pid], (pid, before[pid], connections)  # all new
        self.done.append(kind)

    def release(self) -> None:
        """Let go every process a failpoint stopped."""
        for process in self.processes:
            if stopped(process):
                process.send_signal(signal.SIGCONT)

    def wait_stopped(self, process: subprocess.Popen[bytes], point: str) -> None:
        until(lambda: stopped(process) or process.poll() is not None, point, self.fed)
        self.alive()

    def queues(self) -> dict[str, dict[str, int]]:
        """The node's queues by name: consumers, messages ready and unacked (one call)."""
        rows = json.loads(
            self.node.rabbitmqctl(
                "list_queues",
                "name",
                "consumers",
                "messages_ready",
                "messages_unacknowledged",
                "--formatter",
                "json",
            )
            or "[]"
        )
        return {r["name"]: r for r in rows}

    def finish(self, kind: str) -> None:
        """Every process exits 0 (let go wherever a failpoint still holds it); the
        accounting and the audit are clean."""
        fed = self.fed
        assert self.coordinator is not None
        assert fed.wait_coordinator(self.coordinator, each=self.release) == 0, fed.logs()
        self.release()
        for participant in self.participants:
            assert participant.wait(timeout=120) == 0, fed.logs()
        assert set(self.done) == {"graceful", "kill"}, self.done
        accounting = fed.account()
        fed.record(f"broker restarted ({kind})", len(self.done), accounting)
        assert accounting.versions == fed.rounds, fed.logs()
        assert accounting.committed >= fed.rounds, accounting
        assert accounting.confirmed == accounting.committed + accounting.refused, accounting
        assert accounting.lost == [] and accounting.applied_twice == [], accounting
        assert accounting.missing_from_dlq == []
        audited = fed.audit_command()
        assert audited.returncode == 0, audited.stdout + audited.stderr


@pytest.fixture
def restarts(node: RabbitNode, tmp_path: Path, federation: str) -> Iterator[Restarts]:
    # --verbose: the broker client's own lines (connection lost, reconnecting) in the logs.
    fed = FaultyFederation(
        tmp_path,
        federation,
        rounds=10,
        broker=url(node),
        coordinator_args=["--verbose"],
        participant_args=["--verbose"],
    )
    try:
        yield Restarts(node, fed)
    finally:
        fed.close()


def last_version_held(fed: FaultyFederation) -> str:
    """A coordinator failpoint that stops it right after it commits the version before its
    last, until a restart or ``Restarts.finish`` lets it go. Armed where every restart but
    the last waits for a stop that comes earlier, so only the last restart can meet the
    coordinator held there: the federation cannot end before that restart, however slowly
    the machine runs the test."""
    return f"after_ledger_commit:{fed.rounds - 1}:stop"


def next_commit(run: Restarts, after: int) -> int:
    """The version the ledger commits after ``after`` (waited for), or ``after`` itself if
    the coordinator is held there (``last_version_held``: it commits nothing more until a
    restart lets it go)."""
    coordinator = run.coordinator
    assert coordinator is not None

    def committed_or_held() -> bool:
        return run.fed.committed_version() > after or stopped(coordinator)

    until(committed_or_held, f"a commit after v{after}", run.fed)
    return run.fed.committed_version()


def test_restarts_while_the_coordinator_collects(restarts: Restarts) -> None:
    """The coordinator stops as it folds the first update of the versions made on v0, v2
    and v4 (its folds 1, 7 and 13: sync mode folds 3 a version), with p1 and p2 still
    training (3 s) on that model; the node restarts under it each time. A restart returns
    the update held unacked to the queue, and it comes back as a duplicate of a held one:
    the version still folds 3."""
    run, fed = restarts, restarts.fed
    fed.rounds = 6
    run.coordinator = fed.start_coordinator("coordinator", "collecting:1,7,13:stop")
    run.participants = [fed.start_participant(0)]
    run.participants += [fed.start_participant(i, None, "--delay", "3") for i in (1, 2)]
    plan: list[tuple[int, Kind]] = [(0, "graceful"), (2, "kill"), (4, "graceful")]
    for version, kind in plan:
        run.wait_stopped(run.coordinator, f"the coordinator stopped with 1 update on v{version}")
        assert fed.committed_version() == version, fed.logs()
        run.restart(kind)
    run.finish("collecting")


def test_restarts_right_after_a_commit(restarts: Restarts) -> None:
    """The coordinator stops itself right after the ledger commits v2 and v5 (its updates
    not yet acked) and the node restarts under it; then once more live, at the next commit,
    as the participants take the new model (held at v9, ``last_version_held``, if the
    machine is slower than that)."""
    run, fed = restarts, restarts.fed
    fed.rounds = 10
    stops = f"after_ledger_commit:2,5,{fed.rounds - 1}:stop"  # the last: last_version_held
    run.coordinator = fed.start_coordinator("coordinator", stops)
    run.participants = [fed.start_participant(i, None, "--delay", "2") for i in range(3)]
    plan: list[tuple[int, Kind]] = [(2, "kill"), (5, "graceful")]
    for version, kind in plan:
        run.wait_stopped(run.coordinator, f"the coordinator stopped with v{version} committed")
        assert fed.committed_version() == version, fed.logs()
        run.restart(kind)
    next_commit(run, 5)
    run.restart("kill")  # as the participants take the new model and release their queue
    run.finish("committed")


def test_restarts_while_participants_train(restarts: Restarts) -> None:
    """Each participant stops as it starts training on v1, v4 and v7 (its 2nd, 5th and 8th
    model: sync mode waits for all three, so they train on the same versions); the node
    restarts under all three stopped there, and they go on training (2 s) as they find
    their connections gone."""
    run, fed = restarts, restarts.fed
    fed.rounds = 10
    run.coordinator = fed.start_coordinator("coordinator")
    run.participants = [
        fed.start_participant(i, None, "--delay", "2", failpoint="training:2,5,8:stop")
        for i in range(fed.participants)
    ]
    topology = Topology(fed.name)
    queues = [topology.model_queue(fed.participant_id(i)) for i in range(fed.participants)]
    plan: list[tuple[int, Kind]] = [(1, "graceful"), (4, "kill"), (7, "graceful")]
    for version, kind in plan:
        for i, participant in enumerate(run.participants):
            run.wait_stopped(participant, f"p{i} stopped as it starts training on v{version}")
        # The model goes out while its commit is made durable: a participant may start
        # on it a moment before the ledger has it.
        until(lambda: fed.committed_version() >= version, f"v{version} committed", fed)  # noqa: B023
        assert fed.committed_version() == version, fed.logs()
        listed = run.queues()
        assert all(listed[q]["consumers"] == 0 for q in queues), listed  # released to train
        run.restart(kind)
    run.finish("training")


def test_restarts_while_chunked_models_and_updates_are_published(restarts: Restarts) -> None:
    run, fed = restarts, restarts.fed
    fed.coordinator_args += ["--chunk-bytes", str(1 << 16)]  # 7 chunks a model, an update
    fed.rounds = 10
    # The 10th chunk of the fanouts: v1's 3rd; p1's 10th chunk sent: its 2nd update's 3rd.
    run.coordinator = fed.start_coordinator(
        "coordinator", f"publishing_model:10:stop;{last_version_held(fed)}"
    )
    run.participants = [
        fed.start_participant(
            i, None, "--delay", "1", failpoint="publishing_update:10:stop" if i == 1 else None
        )
        for i in range(fed.participants)
    ]
    run.wait_stopped(run.coordinator, "the coordinator stopped in v1's fanout")
    run.restart("kill")
    run.wait_stopped(run.participants[1], "p1 stopped in its 2nd update's chunks")
    run.restart("graceful")
    next_commit(run, fed.committed_version())
    run.restart("kill")
    run.finish("chunked")


async def test_declarations_and_counts_ride_out_a_restart(
    node: RabbitNode, federation: str
) -> None:
    """A count or a declaration asked while the broker is down (the coordinator answering a
    join, a participant checking its queue) waits for the connection to come back, as a
    publish does, instead of raising the client's own connection error (which ended the
    coordinator's control consumer: nobody answered joins again, and the federation
    stalled)."""
    queue = f"fedq.{federation}.outage"
    transport = AmqpTransport(url(node))
    await transport.connect()
    try:
        await transport.declare_queue(queue)
        await asyncio.to_thread(node.rabbitmqctl, "stop_app")
        depth = asyncio.create_task(transport.queue_depth(queue))
        declared = asyncio.create_task(transport.declare_queue(f"{queue}.2"))
        await asyncio.to_thread(node.rabbitmqctl, "start_app")
        assert await asyncio.wait_for(depth, 60) == 0
        await asyncio.wait_for(declared, 60)
        assert await transport.queue_consumers(f"{queue}.2") == 0
    finally:
        await asyncio.to_thread(node.await_startup)
        for name in (queue, f"{queue}.2"):
            with contextlib.suppress(Exception):
                await transport.delete_queue(name)
        await transport.close()
