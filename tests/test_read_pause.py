"""How long the coordinator's consumer may leave its socket unread (:mod:`fedq.messages.
read_pause`): never as long as aiormq waits for a frame before it gives a connection up."""

from __future__ import annotations

import pytest
from yarl import URL

from fedq.messages.read_pause import LONGEST_PAUSE, longest_pause


@pytest.mark.parametrize(
    ("url", "seconds"),
    [
        ("amqp://h/", LONGEST_PAUSE),
        ("amqp://h/?heartbeat=60", LONGEST_PAUSE),
        ("amqp://h/?heartbeat=5", 4.5),  # aiormq gives up after (5 + 1) x 3 = 18 s
        ("amqp://h/?heartbeat=0", LONGEST_PAUSE),  # no heartbeat, no such limit
        ("amqp://h/?heartbeat=soon", LONGEST_PAUSE),
    ],
)
def test_a_pause_ends_well_before_aiormq_would_give_the_connection_up(url: str, seconds: float):
    assert longest_pause(URL(url)) == seconds
