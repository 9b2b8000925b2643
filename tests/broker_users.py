"""Broker users of a test's own on the shared RabbitMQ, made through its management API
(one HTTP call each, where rabbitmqctl boots an Erlang VM per call) and deleted after."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import urllib.request
from collections.abc import Iterator
from urllib.parse import quote

MANAGEMENT_URL = os.environ.get("FEDQ_TEST_MANAGEMENT_URL", "http://127.0.0.1:15672")


def _call(method: str, path: str, body: dict[str, str] | None = None) -> None:
    request = urllib.request.Request(
        MANAGEMENT_URL + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            "authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=30):
        pass


@contextlib.contextmanager
def broker_users(names: list[str]) -> Iterator[list[tuple[str, str]]]:
    """(name, password) for each of ``names``, with every permission on vhost ``/``."""
    users = [(name, secrets.token_hex(12)) for name in names]
    try:
        for name, password in users:
            _call("PUT", f"/api/users/{quote(name)}", {"password": password, "tags": ""})
            permissions = {"configure": ".*", "write": ".*", "read": ".*"}
            _call("PUT", f"/api/permissions/%2F/{quote(name)}", permissions)
        yield users
    finally:
        for name, _ in users:
            with contextlib.suppress(OSError):
                _call("DELETE", f"/api/users/{quote(name)}")
