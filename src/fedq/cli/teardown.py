"""``fedq teardown``: delete what a federation left on the broker (see :mod:`fedq.teardown`)."""

from __future__ import annotations

from typing import Annotated

import typer

from fedq.cli.flags import BrokerOpt, FederationOpt, ManagementOpt
from fedq.cli.running import fail, run, setup_logging
from fedq.console import console
from fedq.management import ManagementUnavailable, default_management_url
from fedq.settings import settings
from fedq.teardown import TeardownError, teardown


def teardown_command(
    federation: FederationOpt,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Delete even while a coordinator is running.")
    ] = False,
) -> None:
    """Delete every queue and exchange of a federation (fedq.F.*) from the broker."""
    setup_logging(verbose=False)
    url = broker or settings().broker_url
    management = management_url or default_management_url(url)
    try:
        removed = run(teardown(federation, url, management, force=force))
    except (TeardownError, ManagementUnavailable) as exc:
        raise fail(str(exc)) from None
    console.print(removed.summary(federation), highlight=False)
