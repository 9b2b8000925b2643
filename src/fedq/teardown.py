"""``fedq teardown``: delete every queue and exchange of one federation from the broker.

Only a finished ``fedq simulate`` tidies up after itself; a federation run as separate
processes leaves its queues behind (on purpose: an unfinished one resumes from them).
AMQP cannot list what exists, so the names come from RabbitMQ's management API: every
queue and exchange named ``fedq.F.*``. A coordinator still consuming the updates queue
means the federation is running: refused unless forced, since deleting its queues would
lose the updates it has not committed.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedq.management import ManagementClient
from fedq.messages.connect import open_transport
from fedq.messages.topology import Topology


class TeardownError(RuntimeError):
    """Teardown cannot go on; the message says what to do."""


#: Names ``Removed.summary`` lists: a federation of 1,000 participants has 1,000 queues,
#: whose names on one line made a 50 kB line of output.
SHOWN_NAMES = 10


@dataclass(frozen=True)
class Removed:
    queues: list[str]
    exchanges: list[str]

    def summary(self, federation: str, shown: int = SHOWN_NAMES) -> str:
        """One line: how many of each kind went (participants' model queues counted apart
        from the federation's own queues) and at most ``shown`` names, then how many more."""
        if not self.queues and not self.exchanges:
            return f"removed nothing of {federation}: nothing was there"
        model_prefix = Topology(federation).model_queue("")
        models = sum(name.startswith(model_prefix) for name in self.queues)
        names = self.queues + self.exchanges
        listed = ", ".join(names[:shown])
        more = f", ... and {len(names) - shown} more" if len(names) > shown else ""
        return (
            f"removed {len(self.queues)} queues ({models} participants' model queues) and "
            f"{len(self.exchanges)} exchanges of {federation}: {listed}{more}"
        )


async def teardown(
    federation: str, broker_url: str, management_url: str, *, force: bool = False
) -> Removed:
    """Raises ManagementUnavailable when the names cannot be listed, TeardownError while
    a coordinator runs (unless ``force``)."""
    topology = Topology(federation)
    prefix = topology.prefix + "."
    async with ManagementClient(management_url, broker_url, timeout=10.0) as api:
        # The coordinator's lock is exclusive to its connection, and goes with it.
        queues = [
            q.name
            for q in await api.queues()
            if q.name.startswith(prefix) and q.name != topology.lock
        ]
        exchanges = [name for name in await api.exchanges() if name.startswith(prefix)]
    async with open_transport(broker_url) as transport:
        # Asked of the broker itself: the management API's counts lag by seconds.
        updates = topology.updates
        consumers = await transport.queue_consumers(updates) if updates in queues else 0
        if consumers and not force:
            raise TeardownError(
                f"{updates} has {consumers} consumer(s): a coordinator of {federation} is "
                "running. Stop it first, or pass --force to delete its uncommitted updates too"
            )
        for queue in queues:
            await transport.delete_queue(queue)
        for exchange in exchanges:
            await transport.delete_exchange(exchange)
    return Removed(queues, exchanges)
