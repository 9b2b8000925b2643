"""``fedq deploy``: what a deployment needs, made from the federation's shape."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import BaseModel, ConfigDict, Field

from fedq.broker_users import UsersError
from fedq.broker_users import render as render_users
from fedq.cli.flags import FederationName
from fedq.cli.running import fail
from fedq.console import console
from fedq.options import Given, with_settings

deploy_app = typer.Typer(help="Make what a deployment needs.", no_args_is_help=True)


class UsersSettings(BaseModel):
    """The federation's shape and where to write: flags, ``FEDQ_*`` variables (``FEDQ_DEPLOY_*``
    for what is this command's own) or ``--config`` keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    federation: FederationName
    participants: str = Field(description="N (ids p0..pN-1) or ids, comma-separated.")
    out: Path = Field(
        description="Write the definitions (JSON) here.",
        json_schema_extra={"env": "FEDQ_DEPLOY_OUT"},
    )
    env_out: Path | None = Field(
        None,
        description="Write the passwords here, FEDQ_PASSWORD_<USER>=... (mode 0600).",
        json_schema_extra={"env": "FEDQ_DEPLOY_ENV_OUT"},
    )
    vhost: str = Field(
        "fedq",
        description="The federation's vhost.",
        json_schema_extra={"env": "FEDQ_DEPLOY_VHOST"},
    )
    template: bool = Field(
        False,
        description="Disable every password login (empty hashes).",
        json_schema_extra={"flag": "--template", "env": "FEDQ_DEPLOY_TEMPLATE"},
    )


@deploy_app.command("users", short_help="Write the broker users and permissions of a federation.")
@with_settings(UsersSettings)
def deploy_users_command(given: Given) -> None:
    """RabbitMQ definitions for one federation: a vhost, one broker user per participant
    (and for the coordinator, the dashboard and an admin) with generated passwords, and the
    permissions that confine each (load them with RabbitMQ's load_definitions). Passwords
    come from FEDQ_PASSWORD_<USER> or are generated into --env-out; never printed."""
    options = given.build(UsersSettings)
    federation, vhost, out, env_out = (
        options.federation,
        options.vhost,
        options.out,
        options.env_out,
    )
    try:
        render_users(federation, options.participants, vhost, out, env_out, options.template)
    except UsersError as exc:
        raise fail(str(exc)) from None
    kept = f"; passwords in {env_out} (mode 0600)" if env_out else ""
    console.print(f"wrote {out}: broker users of federation {federation} in vhost {vhost}{kept}")
