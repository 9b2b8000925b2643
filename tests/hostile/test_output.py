"""What a participant wrote, printed: ids, reasons and details reach the operator's
terminal through ``fedq history``, the live console, ``fedq audit`` and the log, and the
ledger stores them first. None of them may be obeyed: rich markup (``[/x]`` stops the
print with an error) and terminal controls (``\\x1b[2J`` clears the screen, ``\\n`` forges
a log line) come out as inert visible text. In process: each printer on its own."""

from __future__ import annotations

import io
import logging
import sqlite3

from rich.console import Console

from fedq.cli.history import print_histories
from fedq.cli.running import PrintableFormatter
from fedq.console import history_table
from fedq.coordinator.attendance import Attendance
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.ledger_view import FederationHistory
from fedq.coordinator.records import VersionSummary
from fedq.coordinator.verdicts import Outcome
from fedq.runtime.printable import MAX_CHARS, printable

HOSTILE = "[/x][bold red]p\x1b[2J\x1b]0;owned\x07\r\n\u202eevil\udc80"
#: What it looks like once printable: every control escaped, the markup as written.
SHOWN = "[/x][bold red]p\\x1b[2J\\x1b]0;owned\\x07\\r\\n\\u202eevil\\udc80"


def summary(name: str) -> VersionSummary:
    return VersionSummary(
        version=1, round=1, closed_by="quorum", n_updates=1, participants=[name],
        rejected={"schema": 1}, seconds=0.5, metrics={}, updates=[(name, 0, 0)],
    )  # fmt: skip


def test_printable_escapes_every_control_and_keeps_the_rest():
    assert printable(HOSTILE) == SHOWN
    assert printable("p0 [bold]") == "p0 [bold]"
    assert SHOWN.isprintable()
    cut = printable("\x1b" * 1000)
    assert len(cut) == MAX_CHARS + 3 and cut.endswith("...") and cut.isprintable()


def test_a_history_table_of_hostile_ids_prints_them_as_written():
    out = io.StringIO()
    attendance = [Attendance(version=1, round=1, missing=[HOSTILE])]
    Console(file=out, width=400).print(history_table([summary(HOSTILE)], HOSTILE, attendance))
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert text.count(SHOWN) == 3  # the title, the participants, the missing


def test_history_prints_a_hostile_rejection_as_written(capsys):
    rejection = {
        "update_id": HOSTILE, "participant": HOSTILE, "base_version": 0, "during_version": 0,
        "reason": "schema", "detail": HOSTILE,
    }  # fmt: skip
    print_histories([FederationHistory("f", "/state", [summary("p0")], [rejection], [])])
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\r" not in text
    assert f"{SHOWN} on v0: schema: {SHOWN}" in text


def test_a_log_line_quoting_a_sender_is_one_line_of_visible_characters():
    record = logging.LogRecord("fedq", logging.INFO, __file__, 1, "from %s", (HOSTILE,), None)
    line = PrintableFormatter("%(levelname)s %(message)s").format(record)
    assert line == f"INFO from {SHOWN}"


def test_an_outcome_detail_is_printable_and_bounded():
    outcome = Outcome(None, "schema", f"metrics.{HOSTILE * 1000}.[key]: no")
    assert outcome.detail.isprintable() and len(outcome.detail) == MAX_CHARS + 3


def test_the_rejection_record_stores_whatever_a_refused_message_held(tmp_path):
    """Values of a message refused for them: beyond int64, lone surrogates (not UTF-8),
    a message id of any length. SQLite refuses the first two, and the delivery, never
    acked, would come back to make the coordinator raise again."""
    ledger = UpdateLedger(tmp_path / "ledger.sqlite")
    try:
        ledger.record_rejection(HOSTILE * 100, HOSTILE, 2**70, 2**64 - 1, 3, "schema", HOSTILE)
    finally:
        ledger.close()
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        row = db.execute(
            "SELECT update_id, participant, round, base_version, during_version, detail "
            "FROM rejections"
        ).fetchone()
    update_id, participant, round_, base_version, during, detail = row
    assert (round_, base_version, during) == (None, None, 3)
    assert participant == detail == SHOWN
    assert update_id.isprintable() and update_id.startswith(SHOWN) and len(update_id) == 258
