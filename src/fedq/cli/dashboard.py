"""``fedq dashboard``: a live web page of the federations under a state dir and of their
queues on the broker, with Prometheus metrics at /metrics."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fedq.cli.flags import BrokerUrl, ManagementUrl, StateDirRoot, Verbose
from fedq.cli.running import Failure, fail, run, setup_logging
from fedq.console import console
from fedq.coordinator.roster import RosterError, load_roster
from fedq.dashboard.app import DEFAULT_PORT, DashboardError, serve
from fedq.options import Given, with_settings
from fedq.output import OutputSettings
from fedq.settings import settings


class DashboardSettings(BaseModel):
    """What to show and where: flags, ``FEDQ_*`` variables or ``--config`` keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    broker_url: BrokerUrl = None
    management_url: ManagementUrl = None
    state_dir: StateDirRoot = None
    port: int = Field(
        DEFAULT_PORT,
        ge=0,
        le=65535,
        description="Port of the page.",
        json_schema_extra={"env": "FEDQ_DASHBOARD_PORT"},
    )
    host: str = Field(
        "127.0.0.1",
        description="Address to bind (0.0.0.0: every one).",
        json_schema_extra={"env": "FEDQ_DASHBOARD_HOST"},
    )
    roster: Path | None = Field(
        None, description="The coordinator's --roster: show only the participants it names."
    )
    verbose: Verbose = False


@with_settings(DashboardSettings, OutputSettings)
def dashboard_command(given: Given) -> None:
    """Serve a live page of the federations under a state dir: versions, plots,
    participants, queues and the dead-letter queue."""
    options = given.build(DashboardSettings)
    setup_logging(options.verbose, given.build(OutputSettings), "dashboard")
    url = options.broker_url or settings().broker_url
    root = options.state_dir or settings().state_dir
    host, port = options.host, options.port
    try:
        named = None if options.roster is None else load_roster(options.roster)
    except RosterError as exc:
        raise fail(str(exc)) from None
    console.print(f"dashboard of {root} on http://{host}:{port}/ (Ctrl+C stops it)")
    try:
        run(serve(root, url, options.management_url, host=host, port=port, roster=named))
    except DashboardError as exc:
        raise fail(str(exc)) from None
    except Failure as exc:
        if exc.status != 130:
            raise
        console.print("dashboard stopped")
