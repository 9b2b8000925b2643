"""``fedq audit``: check what the ledger claims against what is on disk (and, given
participants' sent logs, that no update the broker confirmed was lost)."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import BaseModel, ConfigDict, Field

from fedq.cli.flags import StateDirRoot
from fedq.cli.running import fail
from fedq.console import console, plain
from fedq.coordinator.audit import audit
from fedq.coordinator.ledger_schema import LedgerError
from fedq.coordinator.ledger_view import ledgers_under
from fedq.options import Given, with_settings
from fedq.runtime.sent_log import read_sent
from fedq.settings import settings


class AuditSettings(BaseModel):
    """What to audit: flags, ``FEDQ_*`` variables or ``--config`` keys (:mod:`fedq.options`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state_dir: StateDirRoot = Field(
        None, description="The state dir, or one federation's folder in it."
    )
    sent_logs: list[Path] = Field(
        [],
        description="A participant's --sent-log: check that each update the broker confirmed "
        "is committed or refused, not lost.",
        json_schema_extra={"flag": "--sent-log", "env": "FEDQ_AUDIT_SENT_LOGS"},
    )


@with_settings(AuditSettings)
def audit_command(given: Given) -> None:
    """Check the ledger's hash chain, every checkpoint's sha256 and that no update id
    appears twice (and, given sent logs, that no confirmed update was lost); exit status 1
    on any failure.

    DIR is either one federation's folder or the state dir holding one folder per federation.
    """
    options = given.build(AuditSettings)
    state_dir, sent_logs = options.state_dir, options.sent_logs
    for log_path in sent_logs:
        if not log_path.is_file():
            raise fail(f"--sent-log {log_path}: no such file")
    sent = [update for log_path in sent_logs for update in read_sent(log_path)]
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
