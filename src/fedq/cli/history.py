"""``fedq history``: the committed versions of the federations under a state dir, who was
late or missing in each, and every refused update, as a table, JSON or a plot."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from fedq import strict_json
from fedq.cli.flags import StateDirRoot
from fedq.cli.running import fail
from fedq.console import console, history_table, plain
from fedq.coordinator.attendance import natural
from fedq.coordinator.ledger_schema import LedgerError
from fedq.coordinator.ledger_view import FederationHistory, read_histories
from fedq.coordinator.records import VersionSummary
from fedq.options import Given, with_settings
from fedq.plot import PlotUnavailable, plot_history
from fedq.settings import settings


class HistorySettings(BaseModel):
    """What to show: flags, ``FEDQ_*`` variables or ``--config`` keys (:mod:`fedq.options`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state_dir: StateDirRoot = Field(
        None, description="The state dir, or one federation's folder in it."
    )
    federation: str | None = Field(None, description="Only this federation.")
    as_json: bool = Field(
        False,
        description="Print JSON instead of a table.",
        json_schema_extra={"flag": "--json", "env": "FEDQ_HISTORY_JSON"},
    )
    plot: Path | None = Field(
        None,
        description="Also draw loss and accuracy per round into this PNG.",
        json_schema_extra={"env": "FEDQ_HISTORY_PLOT"},
    )


@with_settings(HistorySettings)
def history_command(given: Given) -> None:
    """Print committed rounds, who was late or missing in each, and rejected updates from
    the ledger(s) under a state dir.

    DIR is either one federation's folder or the state dir holding one folder per federation.
    """
    options = given.build(HistorySettings)
    state_dir, federation, plot = options.state_dir, options.federation, options.plot
    try:
        histories = read_histories(state_dir or settings().state_dir, federation)
    except LedgerError as exc:
        raise fail(str(exc)) from None
    if plot is not None:
        try:
            plot_history([(h.federation, h.rounds) for h in histories], plot)
        except PlotUnavailable as exc:
            raise fail(str(exc)) from None
        console.print(plain(f"plot written to {plot}"))
    if options.as_json:
        data = [asdict(h) for h in histories]
        print(strict_json.dumps(data if len(data) > 1 else data[0], indent=2))
        return
    print_histories(histories)


def print_histories(histories: list[FederationHistory]) -> None:
    """Each federation's table, then what was refused, on stdout: the history is this
    command's output. Piped, a table keeps its natural width (not cut to 80 columns, no
    cell wrapped), so its lines can be grepped. What participants wrote (ids, details)
    goes out :func:`~fedq.console.plain`: never markup, never a terminal control."""
    out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)
    for h in histories:
        title = f"federation {h.federation} ({h.state_dir})"
        out.print(history_table(h.rounds, title, h.attendance))
        out.print(plain(participant_shares(h.rounds)))
        for r in h.rejections:
            base = "" if r["base_version"] is None else f" on v{r['base_version']}"
            out.print(
                plain(
                    f"  refused while v{r['during_version']} was current: "
                    f"{r['participant'] or '?'}{base}: {r['reason']}: {r['detail']}"
                )
            )


def participant_shares(rows: list[VersionSummary]) -> str:
    """One line: each participant's folded updates over every version, and its share, so
    that one the federation keeps leaving out (a straggler refused as stale) shows."""
    folded = Counter(p for row in rows for p in row.participants)
    total = sum(folded.values())
    if not total:
        return "  folded updates by participant: none"
    shares = ", ".join(
        f"{p} {n} ({100 * n / total:.0f}%)"
        for p, n in sorted(folded.items(), key=lambda item: natural(item[0]))
    )
    return f"  folded updates by participant: {shares}"
