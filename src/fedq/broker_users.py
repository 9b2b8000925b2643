"""RabbitMQ definitions for one fedq federation: a vhost, one broker user per role and per
participant, the permissions that confine each of them, and a policy.

    fedq deploy users --federation demo --participants 4 \\
        --out deploy/secrets/definitions.json --env-out deploy/.env

(or ``python deploy/render_definitions.py`` with the same flags, where fedq is not
installed).

Passwords come from ``FEDQ_PASSWORD_<USER>`` (``FEDQ_PASSWORD_P0``, ``..._COORDINATOR``)
or are generated; ``--env-out`` writes every password to a file (mode 0600) that
``docker compose`` reads, and ``kubectl create secret --from-env-file`` too. The
definitions hold salted SHA-256 hashes, never a password. ``--template`` writes the
definitions with every password login disabled (empty hash): that is
``deploy/rabbitmq/definitions.json``, the file to read to see what each user may do.

Standard library only, so that deploy/render_definitions.py runs it from a checkout
where fedq is not installed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

#: RabbitMQ's name for the default exchange in permissions.
DEFAULT_EXCHANGE = "amq.default"
#: The policy's caps on the dead-letter queue, the coordinator's own defaults
#: (``fedq.messages.topology``: --dead-letter-bytes, one message per 16 KiB of it; a test
#: keeps them equal): a hostile participant cannot fill the disk with rejected updates, and
#: past them RabbitMQ refuses new copies and keeps the evidence it has (reject-publish;
#: drop-head would let a flood push the first evidence out). Where the coordinator declares
#: other limits, the lower of each applies, and its overflow setting.
REJECTED_MAX_BYTES = 256 << 20
REJECTED_MAX_MESSAGES = REJECTED_MAX_BYTES // (16 << 10)


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))
    with a 4-byte salt."""
    salt = secrets.token_bytes(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def env_name(user: str) -> str:
    """``FEDQ_PASSWORD_P0`` for ``p0``: the variable a user's password is read from."""
    return "FEDQ_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", user).upper()


def participant_ids(spec: str) -> list[str]:
    """``4`` means p0..p3; otherwise a comma-separated list of ids."""
    if spec.isdigit():
        return [f"p{i}" for i in range(int(spec))]
    ids = [p.strip() for p in spec.split(",") if p.strip()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--participants {spec!r}: an id appears twice")
    return ids


def permissions(federation: str, participants: list[str]) -> dict[str, dict[str, str]]:
    """configure / write / read regexes per user, from what fedq does on the broker.

    A participant declares and deletes its own queue fedq.F.model.<id> (configure on it
    alone), binds it to fedq.F.models and fedq.F.control (write on the queue, read on the
    exchanges), consumes it (read) and publishes to fedq.F.updates and fedq.F.control
    (write). It declares no exchange: configure on one would also let it delete it, and
    the coordinator with it. It can read no other queue: not the updates, not another
    participant's model queue.

    The coordinator declares and owns every exchange and every other queue of fedq.F.*,
    and also writes to the default exchange: it copies a refused update into
    fedq.F.rejected, and sends the model to a late joiner's queue.
    """
    f = re.escape(f"fedq.{federation}.")
    out = {
        "admin": {"configure": ".*", "write": ".*", "read": ".*"},
        "coordinator": {
            "configure": f"^{f}",
            "write": f"^({f}.*|{re.escape(DEFAULT_EXCHANGE)})$",
            "read": f"^{f}",
        },
        # A watcher: its own queues, fedq-dashboard.<random>, bound with "#" to
        # fedq.F.control (write on the queue, read on the exchange), consumed (read). It
        # can read no fedq queue; the management API shows it their depths (monitoring).
        "dashboard": {
            "configure": r"^fedq-dashboard\.",
            "write": r"^fedq-dashboard\.",
            "read": rf"^(fedq-dashboard\..*|{f}control)$",
        },
    }
    for p in participants:
        own = f"model{re.escape('.' + p)}"
        out[p] = {
            "configure": rf"^{f}{own}$",
            "write": rf"^{f}({own}|updates|control)$",
            "read": rf"^{f}({own}|models|control)$",
        }
    return out


def topic_permissions(federation: str, participants: list[str]) -> dict[str, dict[str, str]]:
    """Routing keys a participant may use on the topic exchange fedq.F.control: it may
    publish only its own join/heartbeat/leave, and bind only federation.done, so it can
    neither speak for another participant nor announce rounds or the end of the federation.
    """
    return {
        p: {"write": rf"^(join|heartbeat|leave)\.{re.escape(p)}$", "read": r"^federation\.done$"}
        for p in participants
    }


def definitions(
    federation: str, participants: list[str], vhost: str, hashes: dict[str, str]
) -> dict[str, Any]:
    """The definitions file: ``hashes`` maps each user to its password hash ("" disables
    password login)."""
    tags = {"admin": ["administrator"], "dashboard": ["monitoring"]}
    perms = permissions(federation, participants)
    return {
        "users": [
            {
                "name": user,
                "password_hash": hashes[user],
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": tags.get(user, []),
            }
            for user in perms
        ],
        "vhosts": [{"name": vhost}],
        "permissions": [{"user": user, "vhost": vhost, **p} for user, p in perms.items()],
        "topic_permissions": [
            {"user": user, "vhost": vhost, "exchange": f"fedq.{federation}.control", **p}
            for user, p in topic_permissions(federation, participants).items()
        ],
        "policies": [
            {
                "vhost": vhost,
                "name": f"fedq-{federation}-rejected",
                "pattern": f"^{re.escape(f'fedq.{federation}.rejected')}$",
                "apply-to": "queues",
                "priority": 0,
                "definition": {
                    "max-length-bytes": REJECTED_MAX_BYTES,
                    "max-length": REJECTED_MAX_MESSAGES,
                    "overflow": "reject-publish",
                },
            }
        ],
        "parameters": [],
        "global_parameters": [],
        "queues": [],
        "exchanges": [],
        "bindings": [],
    }


def users(participants: list[str]) -> list[str]:
    return ["admin", "coordinator", "dashboard", *participants]


class UsersError(ValueError):
    """A mistake in what was asked; the message says what to do."""


def render(
    federation: str,
    participants: str,
    vhost: str = "fedq",
    out: Path | None = None,
    env_out: Path | None = None,
    template: bool = False,
) -> str | None:
    """Write the definitions to ``out`` (returned instead when None) and the passwords to
    ``env_out``; raises UsersError."""
    if template and env_out is not None:
        raise UsersError("--template sets no password: --env-out has nothing to write")
    try:
        ids = participant_ids(participants)
    except ValueError as exc:
        raise UsersError(str(exc)) from None
    if {"admin", "coordinator", "dashboard"} & set(ids):
        raise UsersError("a participant id may not be admin, coordinator or dashboard")

    passwords: dict[str, str] = {}
    generated = []
    for user in users(ids):
        given = None if template else os.environ.get(env_name(user))
        if given is None and not template:
            given = secrets.token_urlsafe(24)  # URL-safe: it goes into amqp:// URLs as is
            generated.append(user)
        passwords[user] = given or ""
    if generated and env_out is None:
        raise UsersError(
            f"generated passwords for {', '.join(generated)}: pass --env-out FILE to keep "
            "them, or set " + ", ".join(env_name(u) for u in generated)
        )
    hashes = {u: "" if template else password_hash(pw) for u, pw in passwords.items()}
    text = json.dumps(definitions(federation, ids, vhost, hashes), indent=2) + "\n"
    if env_out is not None:
        env_out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(env_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as env:
            env.writelines(f"{env_name(u)}={pw}\n" for u, pw in passwords.items())
    if out is None:
        return text
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--federation", default="demo", help="Federation name (default demo).")
    parser.add_argument(
        "--participants", default="4", help="N (ids p0..pN-1) or ids, comma-separated."
    )
    parser.add_argument("--vhost", default="fedq", help="Virtual host (default fedq).")
    parser.add_argument("--out", type=Path, help="Write the JSON here (default: stdout).")
    parser.add_argument(
        "--env-out", type=Path, help="Write FEDQ_PASSWORD_<USER>=... lines here (mode 0600)."
    )
    parser.add_argument(
        "--template", action="store_true", help="Disable password logins (empty hashes)."
    )
    args = parser.parse_args(argv)
    try:
        text = render(
            args.federation, args.participants, args.vhost, args.out, args.env_out, args.template
        )
    except UsersError as exc:
        parser.error(str(exc))
    if text is not None:
        sys.stdout.write(text)
    return 0
