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
from urllib.parse import quote, urlsplit, urlunsplit

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


@contextlib.contextmanager
def federation_vhost(
    broker_url: str, federation: str, participants: list[str]
) -> Iterator[dict[str, str]]:
    """A vhost of its own on the shared RabbitMQ with the permissions and topic permissions
    `fedq deploy users` renders for ``federation``: users ``coordinator-<federation>`` (the
    coordinator's rights) and one per participant id. Yields an AMQP URL per role
    (``coordinator`` and each participant); all of it is deleted after."""
    from fedq.broker_users import permissions, topic_permissions

    vhost = f"fedq-test-{federation}"
    coordinator = f"coordinator-{federation}"
    perms = permissions(federation, participants)
    users = {"coordinator": coordinator} | {p: p for p in participants}
    passwords = {role: secrets.token_hex(12) for role in users}
    _call("PUT", f"/api/vhosts/{quote(vhost)}", {})
    try:
        for role, name in users.items():
            _call("PUT", f"/api/users/{quote(name)}", {"password": passwords[role], "tags": ""})
            _call("PUT", f"/api/permissions/{quote(vhost)}/{quote(name)}", perms[role])
        for p, topic in topic_permissions(federation, participants).items():
            body = {"exchange": f"fedq.{federation}.control", **topic}
            _call("PUT", f"/api/topic-permissions/{quote(vhost)}/{quote(p)}", body)
        where = urlsplit(broker_url)
        yield {
            role: urlunsplit(
                (
                    where.scheme,
                    f"{quote(name)}:{passwords[role]}@{where.hostname}:{where.port or 5672}",
                    "/" + quote(vhost, safe=""),
                    where.query,
                    "",
                )
            )
            for role, name in users.items()
        }
    finally:
        with contextlib.suppress(OSError):
            _call("DELETE", f"/api/vhosts/{quote(vhost)}")
        for name in users.values():
            with contextlib.suppress(OSError):
                _call("DELETE", f"/api/users/{quote(name)}")
