"""``fedq audit``: check what the ledger claims against what is on disk (and, given
participants' sent logs, that no update the broker confirmed was lost)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedq.cli.flags import StateOpt
from fedq.cli.running import fail
from fedq.console import console, plain
from fedq.coordinator.audit import audit
from fedq.coordinator.ledger_schema import LedgerError
from fedq.coordinator.ledger_view import ledgers_under
from fedq.runtime.sent_log import read_sent
from fedq.settings import settings


def audit_command(
    state_dir: StateOpt = None,
    sent_logs: Annotated[
        list[Path] | None,
        typer.Option(
            "--sent-log",
            help="A participant's --sent-log: check that each update the broker confirmed "
            "is committed or refused, not lost. Repeat for several.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Check the ledger's hash chain, every checkpoint's sha256 and that no update id
    appears twice (and, given sent logs, that no confirmed update was lost); exit status 1
    on any failure.

    DIR is either one federation's folder or the state dir holding one folder per federation.
    """
    sent = [update for log_path in sent_logs or [] for update in read_sent(log_path)]
    failed = False
    try:
        ledgers = ledgers_under(state_dir or settings().state_dir)
    except LedgerError as exc:
        raise fail(str(exc)) from None
    for path in ledgers:
        try:
            report = audit(path, sent)
        except LedgerError as exc:
            raise fail(str(exc)) from None
        if report.unreadable is not None:  # damaged: one line, and the audit fails
            console.print(plain(f"{path.parent}: FAILED {report.unreadable}", style="bold red"))
            failed = True
            continue
        checked_sent = (
            f", of the sent logs' updates {report.sent_committed} committed and "
            f"{report.sent_refused} refused"
            if sent_logs
            else ""
        )
        console.print(
            plain(
                f"{path.parent}: {report.versions} versions chained (head {report.head}), "
                f"{report.checkpoints} checkpoints matching their sha256, {report.updates} "
                f"update ids each in one version{checked_sent}"
            )
        )
        for failure in report.failures:  # update ids from the ledger and the sent logs
            console.print(plain(f"  FAILED {failure}", style="bold red"))
        failed = failed or not report.ok
    if failed:
        raise typer.Exit(1)
    console.print("audit passed", style="green")
