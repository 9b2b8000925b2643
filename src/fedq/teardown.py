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
from urllib.parse import quote

import httpx
import yarl

from fedq.messages.amqp import AmqpTransport, redact
from fedq.messages.topology import Topology


class TeardownError(RuntimeError):
    """Teardown cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Removed:
    queues: list[str]
    exchanges: list[str]


def management_url_for(broker_url: str) -> str:
    """The management API beside an AMQP URL: same host and login, port 15672."""
    amqp = yarl.URL(broker_url)
    return str(
        yarl.URL.build(
            scheme="http",
            host=amqp.host or "127.0.0.1",
            port=15672,
            user=amqp.user or "guest",
            password=amqp.password or "guest",
        )
    )


def _vhost(broker_url: str) -> str:
    path = yarl.URL(broker_url).path.lstrip("/")
    return quote(path or "/", safe="")


async def _listing(management_url: str, vhost: str, kind: str) -> list[dict[str, object]]:
    url = yarl.URL(management_url)
    auth = (url.user or "guest", url.password or "guest")
    base = str(url.with_user(None).with_password(None)).rstrip("/")
    try:
        async with httpx.AsyncClient(auth=auth, timeout=10.0) as client:
            response = await client.get(f"{base}/api/{kind}/{vhost}")
    except httpx.HTTPError as exc:
        raise TeardownError(
            f"management API at {redact(management_url)} unreachable ({type(exc).__name__}): "
            "enable it with `rabbitmq-plugins enable rabbitmq_management` or pass "
            "--management-url"
        ) from None
    if response.status_code != 200:
        raise TeardownError(
            f"management API at {redact(management_url)} answered {response.status_code} for "
            f"/api/{kind}: check the login (it needs the management tag)"
        )
    listed: list[dict[str, object]] = response.json()
    return listed


async def teardown(
    federation: str, broker_url: str, management_url: str, *, force: bool = False
) -> Removed:
    prefix = Topology(federation).prefix + "."
    vhost = _vhost(broker_url)
    queues = [q for q in await _listing(management_url, vhost, "queues")
              if str(q["name"]).startswith(prefix)]  # fmt: skip
    exchanges = [str(e["name"]) for e in await _listing(management_url, vhost, "exchanges")
                 if str(e["name"]).startswith(prefix)]  # fmt: skip
    names = sorted(str(q["name"]) for q in queues)
    updates = Topology(federation).updates
    async with AmqpTransport(broker_url) as transport:
        # Asked of the broker itself: the management API's counts lag by seconds.
        consumers = await transport.queue_consumers(updates) if updates in names else 0
        if consumers and not force:
            raise TeardownError(
                f"{updates} has {consumers} consumer(s): a coordinator of {federation} is "
                "running. Stop it first, or pass --force to delete its uncommitted updates too"
            )
        for queue in names:
            await transport.delete_queue(queue)
        for exchange in sorted(exchanges):
            await transport.delete_exchange(exchange)
    return Removed(names, sorted(exchanges))
