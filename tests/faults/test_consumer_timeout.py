"""Versions and training longer than RabbitMQ's consumer_timeout, on a node of the test's
own whose timeout is 4 s (checked every 0.5 s instead of every minute): the broker closes
the channel of a consumer that holds a delivery unacked for longer. By design nothing in
fedq holds one that long: the coordinator returns held updates to the queue and takes them
again after half the timeout (--consumer-timeout tells it the broker's), and a participant
acks its model once whole and stops consuming while it trains. One participant trains
for 10 s a round, so the other's update is held for 10 s in each version."""

from __future__ import annotations

import pytest

from tests.faults.harness import FaultyFederation
from tests.rabbit_node import RabbitNode, free_ports, rabbit_node

pytestmark = [pytest.mark.broker, pytest.mark.processes]

TIMEOUT_S = 4
SLOW_S = 10


@pytest.fixture(scope="module")
def short_timeout_node(tmp_path_factory: pytest.TempPathFactory):
    [port] = free_ports(1)
    config = (
        f"listeners.tcp.default = 127.0.0.1:{port}\n"
        f"consumer_timeout = {TIMEOUT_S * 1000}\n"
        "loopback_users = none\ndisk_free_limit.absolute = 50MB\n"
    )
    advanced = "[{rabbit, [{channel_tick_interval, 500}]}].\n"
    base = tmp_path_factory.mktemp("timeout-node")
    with rabbit_node(base, config, amqp_port=port, advanced=advanced, label="timeout") as node:
        yield node


def broker_log(node: RabbitNode) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (node.base / "log").glob("*.log"))


def test_versions_and_training_longer_than_the_consumer_timeout(
    short_timeout_node, tmp_path, federation
):
    node = short_timeout_node
    fed = FaultyFederation(
        tmp_path,
        federation,
        participants=2,
        rounds=2,
        broker=f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/",
        coordinator_args=["--consumer-timeout", str(TIMEOUT_S), "--verbose"],
    )
    try:
        coordinator = fed.start_coordinator("coordinator")
        participants = [
            fed.start_participant(0),
            fed.start_participant(1, None, "--delay", str(SLOW_S)),
        ]
        assert fed.wait_coordinator(coordinator, timeout=120) == 0, fed.logs()
        for participant in participants:
            assert participant.wait(timeout=60) == 0, fed.logs()
        accounting = fed.account()
        fed.record("versions and training longer than consumer_timeout", 2, accounting)
        assert accounting.versions == 2 and accounting.committed == 4, fed.logs()
        assert accounting.lost == [] and accounting.applied_twice == []
        assert accounting.missing_from_dlq == []
        # A held update returned to the queue just before its version closed comes back
        # once after the commit: a duplicate, acked and never applied (checked above).
        # Whether the broker timed a consumer out is for its log to say, below.
        rejected = fed.ledger_rows(
            "SELECT participant, reason, detail FROM rejections WHERE reason != 'duplicate'"
        )
        assert rejected == [], fed.logs()
        assert "returned 1 held deliveries" in (tmp_path / "coordinator.log").read_text()
        assert "acknowledgement" not in broker_log(node), "the broker timed a consumer out"
    finally:
        fed.close()
