"""The federation's lock on the broker: one coordinator runs a federation at a time.

The state dir's ``flock`` (:mod:`.state_dir`) stops a second coordinator on the same
state dir; it cannot see one started on another host or volume, which would split the
updates with the first and publish models of its own. RabbitMQ can: an exclusive queue
(:attr:`~fedq.messages.topology.Topology.lock`) is granted to one connection at a time and
deleted when that connection closes, however it closes. A coordinator takes it after its
local checks and before it declares or publishes anything, and the transport takes it
again after each reconnect (:meth:`~fedq.messages.transport.Transport.held_lost` reports
one lost meanwhile).

Why not ``x-single-active-consumer``: a second consumer on such a queue gets no
deliveries, but nothing stops its coordinator publishing models, and an AMQP 0-9-1 client
is never told whether it is the active one.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fedq.coordinator.config import ConfigError
from fedq.messages.topology import Topology
from fedq.messages.transport import Locked, Transport

log = logging.getLogger("fedq.coordinator")

#: How often the lock is asked for while a dead coordinator's connection goes.
LOCK_POLL_SECONDS = 0.2
#: How long a coordinator waits for the lock: one restarted right after a crash may find
#: its predecessor's connection not yet closed by the broker.
LOCK_GRACE_SECONDS = 10.0


class FederationTaken(ConfigError):
    """Another coordinator holds the federation's lock on the broker."""

    def __init__(self, federation: str, lock: str) -> None:
        super().__init__(
            f"another coordinator runs federation {federation} on this broker (its connection "
            f"holds {lock}): run one coordinator per federation; to stand by for it, start "
            "this one with --standby on the same state dir"
        )


async def take_the_federation(
    transport: Transport, topology: Topology, federation: str, wait: float
) -> None:
    """Hold ``topology``'s lock on ``transport``, waiting up to ``wait`` seconds for a dead
    holder's connection to go (at once for a killed process, a heartbeat timeout for a
    lost host); FederationTaken if it is still held then."""
    deadline, said = time.monotonic() + wait, False
    while True:
        try:
            return await transport.hold(topology.lock)
        except Locked:
            if time.monotonic() >= deadline:
                raise FederationTaken(federation, topology.lock) from None
            if not said:
                log.info(
                    "%s is held by another connection: waiting up to %.0f s for it to go",
                    topology.lock, wait,
                )  # fmt: skip
                said = True
            await asyncio.sleep(LOCK_POLL_SECONDS)
