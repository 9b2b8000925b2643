"""``fedq teardown``: delete what a federation left on the broker (see :mod:`fedq.teardown`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fedq.cli.flags import BrokerUrl, FederationName, ManagementUrl
from fedq.cli.running import fail, run, setup_logging
from fedq.console import console
from fedq.management import ManagementUnavailable, default_management_url
from fedq.options import Given, with_settings
from fedq.settings import settings
from fedq.teardown import TeardownError, teardown


class TeardownSettings(BaseModel):
    """Which federation, on which broker: flags, ``FEDQ_*`` variables or ``--config`` keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    federation: FederationName
    broker_url: BrokerUrl = None
    management_url: ManagementUrl = None
    force: bool = Field(
        False,
        description="Delete even while a coordinator is running.",
        json_schema_extra={"flag": "--force", "env": "FEDQ_TEARDOWN_FORCE"},
    )


@with_settings(TeardownSettings)
def teardown_command(given: Given) -> None:
    """Delete every queue and exchange of a federation (fedq.F.*) from the broker."""
    options = given.build(TeardownSettings)
    setup_logging(verbose=False)
    federation = options.federation
    url = options.broker_url or settings().broker_url
    management = options.management_url or default_management_url(url)
    try:
        removed = run(teardown(federation, url, management, force=options.force))
    except (TeardownError, ManagementUnavailable) as exc:
        raise fail(str(exc)) from None
    console.print(removed.summary(federation), highlight=False)
