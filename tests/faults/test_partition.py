"""A participant cut off from the network while its publish is in flight: participant p1
runs in a network namespace the test makes (``ip netns``, a veth pair, addresses of the
test's own) and reaches a RabbitMQ node of the test's own through it. While p1 trains, the
test drops every packet with data towards the namespace (``tc`` on the host's end of the
veth; pure TCP ACKs still pass): p1's update still reaches the broker whole, but the
publisher confirm never comes back. p1's connection dies of missed heartbeats; the test
restores the link; p1 reconnects and publishes the same update again under the same id.
The coordinator counts it once (the second copy is a ``duplicate``), and the federation
completes."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fedq.messages.amqp import AmqpTransport
from fedq.messages.topology import Topology
from fedq.messages.transport import TransportError
from fedq.runtime.sent_log import read_sent
from tests.faults.harness import FaultyFederation
from tests.rabbit_node import RabbitNode, free_ports, rabbit_node

pytestmark = [pytest.mark.broker, pytest.mark.processes]

HEARTBEAT_S = 2
CUT_S = 12  # several heartbeats: both ends give the connection up


#: IPv4 total lengths of a TCP segment with no data: 20 + 20 bytes of headers, + 12 of
#: timestamps (Linux's default), + 12 per SACK block.
PURE_ACK_LENGTHS = (40, 52, 64, 76)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True)


@dataclass
class Namespace:
    name: str
    host_link: str
    host_address: str

    def cut(self, on: bool) -> None:
        """Drop (or stop dropping) every packet from the host into the namespace that
        carries data, letting pure TCP ACKs (and ARP) through: what the participant sends
        still arrives whole, and nothing the broker sends back does (its confirms, its
        heartbeats)."""
        if not on:
            tc("qdisc", "del", "dev", self.host_link, "root")
            return
        link = ["dev", self.host_link]
        tc("qdisc", "add", *link, "root", "handle", "1:", "htb", "default", "20")
        for klass in ("1:10", "1:20"):
            tc("class", "add", *link, "parent", "1:", "classid", klass, "htb", "rate", "10gbit")
        tc("qdisc", "add", *link, "parent", "1:20", "blackhole")
        tc("filter", "add", *link, "parent", "1:", "prio", "1", "protocol", "arp", "u32",
           "match", "u32", "0", "0", "flowid", "1:10")  # fmt: skip
        for length in PURE_ACK_LENGTHS:  # one prio may hold only one protocol's filters
            tc("filter", "add", *link, "parent", "1:", "prio", "2", "protocol", "ip", "u32",
               "match", "u16", str(length), "0xffff", "at", "2", "flowid", "1:10")  # fmt: skip


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    if shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("needs iproute2 (ip, tc)")
    tag = uuid.uuid4().hex[:6]
    name, host, inside = f"fedq-{tag}", f"vf{tag}", f"vp{tag}"
    subnet = f"10.233.{random.randrange(256)}"
    try:
        ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.decode().strip()}")
    try:
        ip("link", "add", host, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", name)
        ip("addr", "add", f"{subnet}.1/30", "dev", host)
        ip("link", "set", host, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{subnet}.2/30", "dev", inside)
        ip("netns", "exec", name, "ip", "link", "set", inside, "up")
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield Namespace(name, host, f"{subnet}.1")
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("link", "del", host)
        ip("netns", "del", name)


@pytest.fixture
def node(tmp_path_factory: pytest.TempPathFactory, namespace: Namespace) -> Iterator[RabbitNode]:
    [port] = free_ports(1)
    config = (
        f"listeners.tcp.1 = 127.0.0.1:{port}\nlisteners.tcp.2 = {namespace.host_address}:{port}\n"
        "loopback_users = none\ndisk_free_limit.absolute = 50MB\n"
    )
    base = tmp_path_factory.mktemp("partition-node")
    with rabbit_node(base, config, amqp_port=port, label="partition") as started:
        yield started


async def consumers(url: str, queue: str) -> int:
    async with AmqpTransport(url) as transport:
        with contextlib.suppress(TransportError):
            return await transport.queue_consumers(queue)
    return -1


def test_a_publish_whose_confirm_was_lost_is_retried_and_counted_once(
    namespace, node, tmp_path, federation
):
    local = f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/"
    remote = (
        f"amqp://guest:guest@{namespace.host_address}:{node.amqp_port}/?heartbeat={HEARTBEAT_S}"
    )
    # A 4 kB update: all of it reaches the broker with no ACK from it (TCP's initial
    # window), so what the cut loses is the confirm, not part of the update.
    fed = FaultyFederation(
        tmp_path, federation, participants=2, rounds=4, broker=local, params=1000
    )
    model_queue = Topology(federation).model_queue("p1")
    try:
        coordinator = fed.start_coordinator("coordinator")
        fed.start_participant(0)
        cut_off = fed.start_participant(
            1, "p1", "--delay", "2", via=["ip", "netns", "exec", namespace.name], broker=remote
        )
        deadline = time.monotonic() + 120
        while fed.committed_version() < 1:
            assert time.monotonic() < deadline, fed.logs()
            time.sleep(0.1)
        # p1 trains (2 s) with no consumer on its queue: the moment to cut it off.
        while asyncio.run(consumers(local, model_queue)) != 0:
            assert time.monotonic() < deadline, fed.logs()
            time.sleep(0.05)
        namespace.cut(True)
        try:
            time.sleep(CUT_S)
        finally:
            namespace.cut(False)
        assert fed.wait_coordinator(coordinator) == 0, fed.logs()
        assert cut_off.wait(timeout=120) == 0, fed.logs()
        accounting = fed.account()
        fed.record("participant cut off while its confirm was in flight", 1, accounting)
        assert accounting.versions == fed.rounds, fed.logs()
        assert accounting.lost == [] and accounting.applied_twice == []
        assert accounting.missing_from_dlq == []
        assert "retrying" in (tmp_path / "p1.log").read_text(), fed.logs()
        # The update whose confirm was lost went out twice under one id and counts once.
        retried = fed.ledger_value(
            "SELECT count(*) FROM rejections WHERE reason = 'duplicate' AND participant = 'p1'"
        )
        assert retried >= 1, fed.logs()
        assert len({s.update_id for s in read_sent(fed.sent_log(1))}) == len(
            read_sent(fed.sent_log(1))
        )
        audited = fed.audit_command()
        assert audited.returncode == 0, audited.stdout + audited.stderr
    finally:
        fed.close()
