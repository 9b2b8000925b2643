"""``fedq deploy``: what a deployment needs, made from the federation's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedq.broker_users import UsersError
from fedq.broker_users import render as render_users
from fedq.cli.flags import FederationOpt
from fedq.cli.running import fail
from fedq.console import console

deploy_app = typer.Typer(help="Make what a deployment needs.", no_args_is_help=True)


@deploy_app.command("users")
def deploy_users_command(
    federation: FederationOpt,
    participants: Annotated[
        str, typer.Option("--participants", help="N (ids p0..pN-1) or ids, comma-separated.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Write the definitions (JSON) here.")],
    env_out: Annotated[
        Path | None,
        typer.Option(
            "--env-out", help="Write the passwords here, FEDQ_PASSWORD_<USER>=... (mode 0600)."
        ),
    ] = None,
    vhost: Annotated[str, typer.Option("--vhost", help="The federation's vhost.")] = "fedq",
    template: Annotated[
        bool, typer.Option("--template", help="Disable every password login (empty hashes).")
    ] = False,
) -> None:
    """RabbitMQ definitions for one federation: a vhost, one broker user per participant
    (and for the coordinator, the dashboard and an admin) with generated passwords, and the
    permissions that confine each (load them with RabbitMQ's load_definitions). Passwords
    come from FEDQ_PASSWORD_<USER> or are generated into --env-out; never printed."""
    try:
        render_users(federation, participants, vhost, out, env_out, template)
    except UsersError as exc:
        raise fail(str(exc)) from None
    kept = f"; passwords in {env_out} (mode 0600)" if env_out else ""
    console.print(f"wrote {out}: broker users of federation {federation} in vhost {vhost}{kept}")
