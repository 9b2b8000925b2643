"""``fedq dashboard``: a live web page of the federations under a state dir and of their
queues on the broker, with Prometheus metrics at /metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedq.cli.flags import BrokerOpt, ManagementOpt, StateOpt, VerboseOpt
from fedq.cli.running import Failure, fail, run, setup_logging
from fedq.console import console
from fedq.coordinator.roster import RosterError, load_roster
from fedq.dashboard.app import DEFAULT_PORT, DashboardError, serve
from fedq.options import Given, with_settings
from fedq.output import OutputSettings
from fedq.settings import settings


@with_settings(OutputSettings)
def dashboard_command(
    given: Given,
    broker: BrokerOpt = None,
    management_url: ManagementOpt = None,
    state_dir: StateOpt = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port of the page.")] = (
        DEFAULT_PORT
    ),
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (0.0.0.0: every one).")
    ] = "127.0.0.1",
    roster: Annotated[
        Path | None,
        typer.Option(
            "--roster", help="The coordinator's --roster: show only the participants it names."
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve a live page of the federations under a state dir: versions, plots,
    participants, queues and the dead-letter queue."""
    setup_logging(verbose, given.build(OutputSettings), "dashboard")
    url, root = broker or settings().broker_url, state_dir or settings().state_dir
    try:
        named = None if roster is None else load_roster(roster)
    except RosterError as exc:
        raise fail(str(exc)) from None
    console.print(f"dashboard of {root} on http://{host}:{port}/ (Ctrl+C stops it)")
    try:
        run(serve(root, url, management_url, host=host, port=port, roster=named))
    except DashboardError as exc:
        raise fail(str(exc)) from None
    except Failure as exc:
        if exc.status != 130:
            raise
        console.print("dashboard stopped")
