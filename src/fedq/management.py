"""RabbitMQ's management API, as fedq needs it: the ``fedq.*`` queues and exchanges of
one vhost (the dashboard shows them, ``fedq teardown`` deletes them).

The API's user and password are the broker URL's unless the management URL has its own
(RabbitMQ's users are the same for both). Every failure becomes a ManagementUnavailable whose
message is one line saying what to do; the board shows it and asks again later.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx
import yarl

from fedq.messages.amqp import redact


def default_management_url(broker_url: str) -> str:
    """The management API beside a broker: its host, port 15672 (the login comes from the
    broker URL when the management URL has none)."""
    return str(
        yarl.URL.build(scheme="http", host=yarl.URL(broker_url).host or "127.0.0.1", port=15672)
    )


#: ``fedq.<federation>.control``: the exchange that tells a federation exists on the broker.
CONTROL_EXCHANGE = re.compile(r"^fedq\.([A-Za-z0-9_-]{1,64})\.control$")
_QUEUE_COLUMNS = (
    "name,type,messages,messages_ready,messages_unacknowledged,consumers,memory,"
    "message_stats.publish_details.rate,message_stats.deliver_get_details.rate"
)


class ManagementUnavailable(RuntimeError):
    """The management API did not answer as it should; the message says what to do."""


@dataclass(frozen=True)
class QueueStats:
    name: str
    type: str
    messages: int
    ready: int
    unacked: int
    consumers: int
    #: Bytes the queue's process uses on the broker.
    memory: int
    #: Messages per second, averaged by RabbitMQ over its last sampling interval.
    publish_rate: float
    deliver_rate: float


class ManagementClient:
    """GETs against one management API; use as ``async with``."""

    def __init__(self, management_url: str, broker_url: str, timeout: float = 3.0) -> None:
        url = yarl.URL(management_url)
        broker = yarl.URL(broker_url)
        user = url.user or broker.user or "guest"
        password = url.password or broker.password or "guest"
        self.where = redact(management_url)
        #: The broker URL's vhost ("/" when it names none).
        self.vhost = urllib.parse.unquote(broker.path[1:]) or "/"
        self._client = httpx.AsyncClient(
            base_url=str(url.with_user(None).with_path("/api/")),
            auth=httpx.BasicAuth(user, password),
            timeout=timeout,
        )

    async def __aenter__(self) -> ManagementClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def queues(self) -> list[QueueStats]:
        """Every ``fedq.*`` queue of the vhost, by name."""
        rows = await self._get(f"queues/{self._vhost_path}", {"columns": _QUEUE_COLUMNS})
        return sorted(
            (_queue_stats(row) for row in rows if str(row.get("name", "")).startswith("fedq.")),
            key=lambda q: q.name,
        )

    async def exchanges(self) -> list[str]:
        """The names of every ``fedq.*`` exchange of the vhost, sorted."""
        rows = await self._get(f"exchanges/{self._vhost_path}", {"columns": "name"})
        return sorted(name for row in rows if (name := str(row["name"])).startswith("fedq."))

    async def federations(self) -> set[str]:
        """Federations whose control exchange exists on the broker."""
        return {
            m.group(1) for name in await self.exchanges() if (m := CONTROL_EXCHANGE.match(name))
        }

    @property
    def _vhost_path(self) -> str:
        return urllib.parse.quote(self.vhost, safe="")

    async def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        try:
            response = await self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise ManagementUnavailable(
                f"management API at {self.where} unreachable ({exc.__class__.__name__}): "
                "enable it with `rabbitmq-plugins enable rabbitmq_management`, or pass the "
                "right --management-url"
            ) from None
        if response.status_code == 401:
            raise ManagementUnavailable(
                f"management API at {self.where} refused the login: give a user with the "
                "monitoring tag in --management-url (or the broker URL)"
            )
        if response.status_code == 404:
            raise ManagementUnavailable(
                f"management API at {self.where} knows no /api/{path}: check the vhost of "
                "the broker URL, and that the plugin is on (`rabbitmq-plugins enable "
                "rabbitmq_management`)"
            )
        if response.status_code != 200:
            raise ManagementUnavailable(
                f"management API at {self.where} answered HTTP {response.status_code}: if it "
                "is not starting, enable it with `rabbitmq-plugins enable rabbitmq_management`"
            )
        try:
            rows = response.json()
        except ValueError:
            raise ManagementUnavailable(
                f"{self.where} did not answer JSON: is --management-url RabbitMQ's "
                "management API (port 15672)?"
            ) from None
        if not isinstance(rows, list):
            raise ManagementUnavailable(f"{self.where}/api/{path} did not answer a list")
        return rows


def _queue_stats(row: dict[str, Any]) -> QueueStats:
    stats = row.get("message_stats") or {}

    def rate(key: str) -> float:
        return float((stats.get(key) or {}).get("rate") or 0.0)

    return QueueStats(
        name=str(row["name"]),
        type=str(row.get("type") or "classic"),
        messages=int(row.get("messages") or 0),
        ready=int(row.get("messages_ready") or 0),
        unacked=int(row.get("messages_unacknowledged") or 0),
        consumers=int(row.get("consumers") or 0),
        memory=int(row.get("memory") or 0),
        publish_rate=rate("publish_details"),
        deliver_rate=rate("deliver_get_details"),
    )
