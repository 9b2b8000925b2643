"""The shared RabbitMQ left as the tests found it.

Two layers, both through the management API (one HTTP call each, where ``rabbitmqctl``
boots an Erlang VM per call):

- each broker test's federation is torn down after it with ``fedq teardown --force``'s own
  code (:func:`clear_federation`), so a test needs no cleanup of its own for the queues
  and exchanges its federation's processes leave, even when it fails half-way;
- the session compares what the broker holds at its end with what it held at its start
  (:class:`BrokerWatch`): queues, exchanges, users, vhosts and policies that are new are
  listed with the test after which each was first seen, deleted, and fail the run. That
  catches what no fixture names: a test's own queue, a user it made, the dead-letter
  queue a finished ``fedq simulate`` keeps while it holds refused updates.

Entities that go on their own shortly after a process exits (exclusive and auto-delete
queues of a connection the broker has yet to see close) are waited for, boundedly,
before anything counts as left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from fedq.management import ManagementUnavailable
from fedq.teardown import teardown
from tests.broker_users import MANAGEMENT_URL

AUTH = ("guest", "guest")
#: How long things a test's processes left may take to go on their own.
SETTLE_SECONDS = float(os.environ.get("FEDQ_TEST_SETTLE_SECONDS", "20"))
#: Set, the watch sees only names holding it, and the ``federation`` fixture's names hold
#: it: a session run inside another (tests/test_broker_hygiene.py) then never takes what
#: the outer session's tests, running beside it, have on the broker for its own to delete.
WATCH_ONLY = os.environ.get("FEDQ_TEST_WATCH_ONLY", "")


def clear_federation(federation: str, broker_url: str) -> None:
    """Delete every queue and exchange of ``federation`` on the shared broker. Runs in a
    thread of its own, so it works from sync and async tests' teardown alike."""

    def run() -> None:
        with contextlib.suppress(ManagementUnavailable):
            asyncio.run(teardown(federation, broker_url, MANAGEMENT_URL, force=True))

    worker = threading.Thread(target=run, name=f"clear-{federation}")
    worker.start()
    worker.join()


Entity = tuple[str, str, str]  # (kind, vhost or "", name)
#: Each kind's name for one of it.
ONE_OF = {
    "queues": "queue",
    "exchanges": "exchange",
    "policies": "policy",
    "users": "user",
    "vhosts": "vhost",
}


def management_client(timeout: float = 10) -> httpx.Client:
    return httpx.Client(base_url=MANAGEMENT_URL, auth=AUTH, timeout=timeout)


@dataclass(frozen=True)
class BrokerInventory:
    """Names of what the broker holds, per kind."""

    entities: frozenset[Entity]

    @classmethod
    def read(cls, api: httpx.Client | None = None) -> BrokerInventory | None:
        """The broker's inventory now, or None when its management API does not answer.
        ``api``: a client to reuse (here a new one made a read take 60 ms, against 7 ms)."""
        try:
            with contextlib.ExitStack() as stack:
                if api is None:
                    api = stack.enter_context(management_client())
                found: set[Entity] = set()
                for kind in ("queues", "exchanges", "policies"):  # per vhost
                    for item in api.get(f"/api/{kind}", params={"columns": "vhost,name"}).json():
                        found.add((kind, item["vhost"], item["name"]))
                for kind in ("users", "vhosts"):
                    for item in api.get(f"/api/{kind}", params={"columns": "name"}).json():
                        found.add((kind, "", item["name"]))
                found = {entity for entity in found if WATCH_ONLY in entity[2]}
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
        return cls(frozenset(found))

    def added_since(self, before: BrokerInventory) -> set[Entity]:
        return set(self.entities - before.entities)


class BrokerWatch:
    """What the shared broker held when the session started, and which broker test each
    thing new on it was first seen after (one inventory read per broker test), so what is
    left at the end is named with the test that left it."""

    def __init__(self) -> None:
        #: One client for the session: the watch reads after each of some 470 broker tests.
        self.api = management_client()
        self.before = BrokerInventory.read(self.api)
        #: Each entity's suspects: the test it was first seen after, one per pytest-xdist
        #: worker that saw it (tests running side by side see each other's entities).
        self.first_seen: dict[Entity, list[str]] = {}
        self.used = False

    def after_test(self, test: str) -> None:
        self.used = True
        if self.before is None:
            return
        now = BrokerInventory.read(self.api)
        for entity in () if now is None else now.added_since(self.before):
            self.first_seen.setdefault(entity, [test])

    def export(self) -> dict[str, Any]:
        """What a pytest-xdist worker saw, as plain data for the controller's :meth:`merge`."""
        return {"used": self.used, "first_seen": [[*e, *t] for e, t in self.first_seen.items()]}

    def merge(self, seen: dict[str, Any]) -> None:
        """Add what one worker saw (its :meth:`export`): the controller runs no test, so
        its leftovers are named with the workers' suspects."""
        self.used = self.used or bool(seen["used"])
        for kind, vhost, name, *tests in seen["first_seen"]:
            self.first_seen.setdefault((kind, vhost, name), []).extend(tests)

    def leftovers(self, within: float = SETTLE_SECONDS) -> dict[Entity, str]:
        """What the broker holds now that it did not at the start, after waiting up to
        ``within`` seconds for it to go on its own, each with the test it was first seen
        after; empty when no broker test ran or the API does not answer."""
        if self.before is None or not self.used:
            return {}
        deadline = time.monotonic() + within
        while True:
            now = BrokerInventory.read(self.api)
            if now is None:
                return {}
            added = now.added_since(self.before)
            if not added or time.monotonic() >= deadline:
                return {
                    e: " or ".join(self.first_seen.get(e, ["the session's end"])) for e in added
                }
            time.sleep(0.5)  # sleep-ok: what is left after the wait is the finding, not a failure


def delete(entities: Iterable[Entity]) -> None:
    """Delete ``entities`` (what a run left), users and vhosts last."""
    order = list(ONE_OF)
    with management_client(timeout=30) as api:
        for kind, vhost, name in sorted(entities, key=lambda e: order.index(e[0])):
            path = f"/api/{kind}/{quote(vhost, safe='')}/{quote(name, safe='')}"
            if kind in ("users", "vhosts"):
                path = f"/api/{kind}/{quote(name, safe='')}"
            with contextlib.suppress(httpx.HTTPError):
                api.delete(path)
