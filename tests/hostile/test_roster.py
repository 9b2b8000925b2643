"""``--roster``: the federation's participants named by the operator. Updates under other
ids are refused (``not_in_roster``), their control events ignored and never counted, and
an update weighs at most the examples its participant declared, whatever it claims."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.membership import Membership
from fedq.coordinator.observers import Observers
from fedq.coordinator.service import Coordinator
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import encode_message
from fedq.messages.schema import MESSAGE_TYPES, Heartbeat, UpdateMeta
from fedq.messages.topology import UPDATE_KEY, Topology, participant_key
from tests.conftest import BROKER_URL
from tests.helpers import run_fedq

pytestmark = [pytest.mark.broker, pytest.mark.processes]

ROSTER = """
[participants]
p0 = { examples = 10 }
p1 = {}
"""


def roster_config(tmp_path: Path, federation: str, **settings: Any) -> CoordinatorConfig:
    roster = tmp_path / "roster.toml"
    roster.write_text(ROSTER)
    return CoordinatorConfig(
        federation=federation, participants=2, rounds=1, state_dir=tmp_path / "state",
        roster=roster, linger_seconds=0, **settings,
    )  # fmt: skip


async def test_a_claim_beyond_the_declared_size_weighs_the_declared_size(tmp_path, federation):
    # The weight cap off, so that only the roster bounds p0's claim.
    config = roster_config(tmp_path, federation, max_weight_share=1.0)
    app = SyntheticApp(params=6)
    initial = app.initial_weights()
    topology = Topology(federation)
    # The intruder first: the version closes once p0 and p1 are in.
    sent = [("intruder", 5, 9.0), ("p1", 30, 0.1), ("p0", 10**12, -0.5)]
    async with AmqpTransport(BROKER_URL) as own, AmqpTransport(BROKER_URL) as sender:
        await topology.declare_core(sender)
        try:
            for participant, claimed, value in sent:
                meta = UpdateMeta(
                    federation=federation, participant=participant, round=1,
                    base_version=0, num_examples=claimed,
                )  # fmt: skip
                delta = {k: np.full_like(v, value) for k, v in initial.items()}
                await sender.publish(
                    topology.updates, UPDATE_KEY, encode_message(meta, delta),
                    message_id=meta.update_id, type=MESSAGE_TYPES["update"], mandatory=True,
                )  # fmt: skip
            result = await asyncio.wait_for(Coordinator(config, app, own).run(), 60)
        finally:
            await topology.delete(sender, [])
    assert (result.updates_incorporated, result.rejected_by_reason) == (2, {"not_in_roster": 1})
    committed = load_checkpoint(checkpoint_path(config.state_dir / "models", 1))
    step = (30 * 0.1 + 10 * -0.5) / (30 + 10)
    for name, before in initial.items():
        np.testing.assert_allclose(committed[name], before + np.float32(step), rtol=1e-6)


async def test_control_events_of_ids_off_the_roster_are_never_remembered(tmp_path, federation):
    """Made-up ids (with no --verify-identity, any sender may claim any) are not alive,
    not remembered, and counted as ignored; the roster's own are."""
    config = roster_config(tmp_path, federation)
    # Heartbeats touch neither the transport nor the publisher (only a join is answered).
    membership = Membership(
        config, cast(Any, None), Topology(federation), cast(Any, None), Observers([])
    )
    for i in range(500):
        ghost = Heartbeat(federation=federation, participant=f"ghost-{i}")
        await membership.on_event(ghost, None, participant_key("heartbeat", ghost.participant))
    await membership.on_event(
        Heartbeat(federation=federation, participant="p1"), None, "heartbeat.p1"
    )
    assert membership.ignored["not_in_roster"] == 500
    assert list(membership.last_seen) == ["p1"]
    assert membership.alive() == 1


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "cannot read the roster"),
        ("[participants\n", "is not valid TOML"),
        ("[participants]\n'bad id!' = {}\n", "participants.bad id!"),
        ("[participants]\np0 = { examples = 0 }\np1 = {}\n", "greater than 0"),
        ("[participants]\np0 = {}\n", "names 1 participants, fewer than --participants (2)"),
    ],
)
def test_a_roster_that_cannot_be_used_is_one_line_before_the_broker(tmp_path, text, says):
    roster = tmp_path / "roster.toml"
    if text is not None:
        roster.write_text(text)
    # A broker URL nothing listens on: the roster is refused before any connection.
    run = run_fedq(
        "coordinator", "--app", "fedq.apps.synthetic:app", "--federation", "roster-check",
        "-n", "2", "-r", "1", "--roster", str(roster), "--state-dir", str(tmp_path / "s"),
        "--broker", "amqp://guest:guest@127.0.0.1:1/", timeout=60,
    )  # fmt: skip
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert says in output and "Traceback" not in output, output
    assert "cannot reach RabbitMQ" not in output
