"""With ``consumers_apart`` (the coordinator's transport), each consumer has a connection
of its own: when one goes down (here closed by the broker's management API, as a frame
the client cannot read or a missed heartbeat would), the others and the publishing go on
untouched, and the one that went down comes back."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from typing import Any
from urllib.parse import quote

import pytest

from fedq.messages.amqp import AmqpTransport
from tests.broker_users import MANAGEMENT_URL
from tests.conftest import BROKER_URL

pytestmark = pytest.mark.broker


def _management(method: str, path: str) -> Any:
    request = urllib.request.Request(
        MANAGEMENT_URL + path,
        method=method,
        headers={"authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body else None


def _connections(prefix: str) -> dict[str, str]:
    """Client-provided name -> the broker's name, of the connections named ``prefix``..."""
    listed = _management("GET", "/api/connections?columns=name,client_properties")
    return {
        c["client_properties"]["connection_name"]: c["name"]
        for c in listed
        if str(c.get("client_properties", {}).get("connection_name", "")).startswith(prefix)
    }


async def _listed(prefix: str, expected: set[str], within: float = 30.0) -> dict[str, str]:
    """The connections named ``prefix``..., once they are exactly ``expected`` (the
    management API lists a connection some seconds after it opens)."""
    deadline = time.monotonic() + within
    while (seen := await asyncio.to_thread(_connections, prefix)).keys() != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"connections {sorted(seen)} after {within} s, not {expected}")
        await asyncio.sleep(0.5)
    return seen


async def test_one_consumer_connection_going_down_leaves_the_others(federation):
    name = f"apart {federation}"
    qa, qb = f"{federation}.a", f"{federation}.b"
    async with AmqpTransport(BROKER_URL, name=name, consumers_apart=True) as transport:
        for queue in (qa, qb):
            await transport.declare_queue(queue, durable=False)
        try:
            async with (
                transport.consume(qa, prefetch=1) as a,
                transport.consume(qb, prefetch=1) as b,
            ):
                before = await _listed(name, {name, f"{name} {qa}", f"{name} {qb}"})
                await asyncio.to_thread(
                    _management, "DELETE", f"/api/connections/{quote(before[f'{name} {qa}'])}"
                )
                # The publishing connection and b's consumer never noticed.
                await transport.publish("", qb, b"to b")
                got = await asyncio.wait_for(anext(b), 10)
                assert got.body == b"to b"
                await got.ack()
                # a's connection came back (the robust connection reconnects) ...
                await transport.publish("", qa, b"to a")
                got = await asyncio.wait_for(anext(a), 30)
                assert got.body == b"to a"
                await got.ack()
                after = await _listed(name, set(before))
                # ... under a new broker-side name; the others kept theirs.
                assert after[f"{name} {qa}"] != before[f"{name} {qa}"]
                assert {k: after[k] for k in (name, f"{name} {qb}")} == {
                    k: before[k] for k in (name, f"{name} {qb}")
                }
        finally:
            for queue in (qa, qb):
                await transport.delete_queue(queue)
