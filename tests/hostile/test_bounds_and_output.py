"""Numbers beyond what the ledger stores, and names that a terminal or rich would obey,
published among an honest federation of three real `fedq` processes on RabbitMQ.

Before the schema bounded them, ``num_examples = 2**64 - 1`` was admitted and crashed the
ledger's commit (SQLite's INTEGER is int64: the coordinator died, and met the unacked
update again on every restart); ``round = 2**64 - 1`` crashed the rejection record; a
rich markup id or metric name (``[/x]``) stopped ``fedq history`` for that state dir, and
``\\x1b[2J`` cleared the screen of whoever read it. Now each is refused as ``schema`` with
its exact reason, its body is in the dead-letter queue byte for byte, the honest
federation commits every version as the exact FedAvg of the honest updates, and
``fedq history`` prints the whole history, markup and escapes as inert text.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.messages.amqp import AmqpTransport
from fedq.messages.schema import MESSAGE_TYPES
from fedq.messages.topology import UPDATE_KEY, Topology
from tests.faults.harness import PARAMS, FaultyFederation
from tests.helpers import run_fedq, strict_loads
from tests.hostile.cases import CLEAR_SCREEN, MARKUP, bounds_cases

pytestmark = [pytest.mark.broker, pytest.mark.processes]

#: A broker message id that is itself hostile: it is the ledger's update id of a body that
#: has none (refused before its metadata validated).
HOSTILE_MESSAGE_ID = f"{MARKUP}{CLEAR_SCREEN}"


async def publish_before_the_run(url: str, topology: Topology, bodies: dict[str, bytes]) -> None:
    """Queued before the coordinator starts: it takes them first, while v0 is open."""
    async with AmqpTransport(url) as transport:
        await topology.declare_core(transport)
        for message_id, body in bodies.items():
            await transport.publish(
                topology.updates, UPDATE_KEY, body, message_id=message_id,
                type=MESSAGE_TYPES["update"], mandatory=True,
            )  # fmt: skip


def test_numbers_and_names_out_of_bounds_are_refused_and_history_stays_readable(
    tmp_path, federation
):
    model = SyntheticApp(params=PARAMS).initial_weights()
    cases = bounds_cases(federation, model, version=0)  # round 1 on v0: what v0 admits
    by_id = {f"bounds-{i}": case for i, case in enumerate(cases)}
    [markup_metric] = [c for c in cases if c.kind == "metric name with markup"]
    by_id[HOSTILE_MESSAGE_ID] = markup_metric
    fed = FaultyFederation(tmp_path, federation, rounds=3)
    topology = Topology(federation)
    try:
        bodies = {message_id: case.body for message_id, case in by_id.items()}
        asyncio.run(publish_before_the_run(fed.broker, topology, bodies))
        coordinator = fed.start_coordinator("coordinator")
        participants = [fed.start_participant(i) for i in range(fed.participants)]
        assert fed.wait_coordinator(coordinator) == 0, fed.logs()
        for participant in participants:
            assert participant.wait(timeout=120) == 0, fed.logs()

        accounting = fed.account()
        assert accounting.versions == fed.rounds, fed.logs()
        assert accounting.lost == [] and accounting.applied_twice == []  # exact FedAvg
        dead = {d.message_id: d for d in accounting.dead_letters}
        for message_id, case in by_id.items():
            assert bytes(dead[message_id].body) == case.body, case.kind
            assert str(dead[message_id].headers["x-fedq-reason"]) == case.header, case.kind
        assert fed.ledger_value("SELECT count(*) FROM rejections WHERE reason = 'schema'") == len(
            by_id
        )
        # The refused body had no valid metadata: the ledger keeps its message id, escaped.
        escaped_id = f"{MARKUP}\\x1b[2J"
        assert fed.ledger_value(
            f"SELECT count(*) FROM rejections WHERE update_id = '{escaped_id}'"
        ) == 1  # fmt: skip

        history = run_fedq("history", "--state-dir", str(fed.state), timeout=120)
        assert history.returncode == 0, history.stderr
        assert "\x1b" not in history.stdout + history.stderr
        for version in range(1, fed.rounds + 1):
            assert any(
                line.split()[:2] == ["│", str(version)] for line in history.stdout.splitlines()
            ), history.stdout
        assert f"metrics.{MARKUP}.[key]" in history.stdout  # printed as written, not obeyed
        assert "metrics.\\x1b[2J.[key]" in history.stdout
        as_json = run_fedq("history", "--state-dir", str(fed.state), "--json", timeout=120)
        assert as_json.returncode == 0, as_json.stderr
        report = strict_loads(as_json.stdout)
        assert len(report["rounds"]) == fed.rounds
        assert "\x1b" not in json.dumps(report["rejections"], ensure_ascii=False)
    finally:
        fed.close()
