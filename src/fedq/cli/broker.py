"""``fedq broker check``: whether RabbitMQ is reachable and takes the login, in one line."""

from __future__ import annotations

import typer
from pydantic import BaseModel, ConfigDict

from fedq.cli.flags import BrokerUrl
from fedq.cli.running import run, setup_logging
from fedq.console import console
from fedq.messages.amqp import redact
from fedq.messages.connect import open_transport
from fedq.options import Given, with_settings
from fedq.settings import settings

broker_app = typer.Typer(help="Check the RabbitMQ broker.", no_args_is_help=True)


class BrokerCheckSettings(BaseModel):
    """Which broker: ``--broker``, ``FEDQ_BROKER_URL`` or a ``--config`` key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    broker_url: BrokerUrl = None


@broker_app.command("check")
@with_settings(BrokerCheckSettings)
def broker_check(given: Given) -> None:
    """Say whether RabbitMQ is reachable, and what to do if it is not."""
    setup_logging(verbose=False)
    url = given.build(BrokerCheckSettings).broker_url or settings().broker_url

    async def main() -> None:
        async with open_transport(url, connect_timeout=5.0):
            pass

    run(main())
    console.print(f"RabbitMQ at {redact(url)} is reachable and accepted the login")
