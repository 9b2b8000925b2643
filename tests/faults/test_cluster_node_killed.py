"""A 3-node RabbitMQ cluster of the test's own on this machine, the updates in a quorum
queue (replicated on all three) whose leader is on node 2. The coordinator and the
participants are connected to node 1; node 2 is killed (SIGKILL) mid-federation. The queue
elects a new leader among the two left, and the federation completes with nothing
confirmed lost or applied twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time

import pytest

from fedq.messages.amqp import AmqpTransport
from fedq.messages.topology import UPDATE_KEY, Topology
from tests.faults.harness import FaultyFederation
from tests.rabbit_node import RabbitNode, free_ports, rabbit_node

pytestmark = [pytest.mark.broker, pytest.mark.processes]


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory):
    cookie = secrets.token_hex(16)
    with contextlib.ExitStack() as stack:
        nodes: list[RabbitNode] = []
        for i in range(3):
            [port] = free_ports(1)
            config = (
                f"listeners.tcp.default = 127.0.0.1:{port}\n"
                "loopback_users = none\ndisk_free_limit.absolute = 50MB\n"
            )
            base = tmp_path_factory.mktemp(f"cluster-{i}")
            booting = rabbit_node(base, config, amqp_port=port, label=f"c{i}", cookie=cookie)
            nodes.append(stack.enter_context(booting))
        for joining in nodes[1:]:
            joining.rabbitmqctl("stop_app")
            joining.rabbitmqctl("join_cluster", nodes[0].name)
            joining.rabbitmqctl("start_app")
        yield nodes


def leader(node: RabbitNode, queue: str) -> str:
    """The node that leads quorum queue ``queue``, as ``node`` sees it."""
    rows = json.loads(node.rabbitmqctl("list_queues", "name", "leader", "--formatter", "json"))
    return next(str(row["leader"]) for row in rows if row["name"] == queue)


def url(node: RabbitNode) -> str:
    return f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/"


def test_a_cluster_node_holding_the_queue_leader_killed_mid_federation(
    cluster, tmp_path, federation
):
    first, second, _ = cluster
    topology = Topology(federation)

    async def updates_queue_led_by_node_2() -> None:
        async with AmqpTransport(url(second)) as transport:
            await transport.declare_exchange(topology.updates, "direct")
            await transport.declare_queue(topology.updates, arguments=topology.updates_arguments())
            await transport.bind(topology.updates, topology.updates, UPDATE_KEY)

    asyncio.run(updates_queue_led_by_node_2())
    assert leader(first, topology.updates) == second.name
    fed = FaultyFederation(
        tmp_path, federation, rounds=6, broker=url(first), participant_args=["--delay", "1"]
    )
    try:
        coordinator = fed.start_coordinator("coordinator")
        participants = [fed.start_participant(i) for i in range(fed.participants)]
        deadline = time.monotonic() + 120
        while fed.committed_version() < 2:
            assert time.monotonic() < deadline and coordinator.poll() is None, fed.logs()
            time.sleep(0.1)
        second.kill()
        assert fed.wait_coordinator(coordinator) == 0, fed.logs()
        for participant in participants:
            assert participant.wait(timeout=60) == 0, fed.logs()
        accounting = fed.account()
        fed.record("cluster node with the updates queue's leader killed", 1, accounting)
        assert accounting.versions == fed.rounds, fed.logs()
        assert accounting.lost == [] and accounting.applied_twice == []
        assert accounting.missing_from_dlq == []
        assert leader(first, topology.updates) in {first.name, cluster[2].name}
        audited = fed.audit_command()
        assert audited.returncode == 0, audited.stdout + audited.stderr
    finally:
        fed.close()
