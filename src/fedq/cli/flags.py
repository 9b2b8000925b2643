"""Flags several commands share, declared once: ``--app``, ``--broker``, ``--federation``,
``--state-dir``, ``--report``, ``--verbose`` and ``--management-url``. (Settings that are
fields of a settings model get their flags from :mod:`fedq.options` instead.)"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

AppOpt = Annotated[str, typer.Option("--app", help="The app, package.module:attr.")]
BrokerOpt = Annotated[
    str | None,
    typer.Option("--broker", help="RabbitMQ URL (env FEDQ_BROKER_URL).", show_default=False),
]
FederationOpt = Annotated[str, typer.Option("--federation", help="Federation name.")]
StateOpt = Annotated[
    Path | None, typer.Option("--state-dir", help="Checkpoints and ledger (env FEDQ_STATE_DIR).")
]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Write a JSON report here.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")]
ManagementOpt = Annotated[
    str | None,
    typer.Option(
        "--management-url",
        help="RabbitMQ's management API, which lists the queues (default: the broker's host, "
        "port 15672, the broker's login).",
        show_default=False,
    ),
]
