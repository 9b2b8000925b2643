"""``fedq history``: the committed versions of the federations under a state dir, who was
late or missing in each, and every refused update, as a table, JSON or a plot."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fedq import strict_json
from fedq.cli.flags import StateOpt
from fedq.cli.running import fail
from fedq.console import console, history_table
from fedq.coordinator.ledger import LedgerError, UpdateLedger
from fedq.coordinator.records import RoundHistory
from fedq.dashboard.ledgers import find_ledgers
from fedq.lateness import Attendance, attendance
from fedq.plot import PlotUnavailable, plot_history
from fedq.settings import settings


def history_command(
    state_dir: StateOpt = None,
    federation: Annotated[
        str | None, typer.Option("--federation", help="Only this federation.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Also draw loss and accuracy per round into this PNG."),
    ] = None,
) -> None:
    """Print committed rounds, who was late or missing in each, and rejected updates from
    the ledger(s) under a state dir.

    DIR is either one federation's folder or the state dir holding one folder per federation.
    """
    root = state_dir or settings().state_dir
    ledgers = ledgers_under(root)
    if federation is not None:
        ledgers = [p for p in ledgers if p.parent.name == federation or p.parent == root]
    if not ledgers:
        raise fail(f"no ledger of {federation} under {root}")
    histories = [read_history(path) for path in ledgers]
    if plot is not None:
        try:
            plot_history([(h.federation, h.rounds) for h in histories], plot)
        except PlotUnavailable as exc:
            raise fail(str(exc)) from None
        console.print(f"plot written to {plot}")
    if as_json:
        data = [asdict(h) for h in histories]
        print(strict_json.dumps(data if len(data) > 1 else data[0], indent=2))
        return
    print_histories(histories)


def print_histories(histories: list[FederationHistory]) -> None:
    """Each federation's table, then what was refused, on stdout: the history is this
    command's output. Piped, a table keeps its natural width (not cut to 80 columns, no
    cell wrapped), so its lines can be grepped."""
    out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)
    for h in histories:
        title = f"federation {h.federation} ({h.state_dir})"
        out.print(history_table(h.rounds, title, h.attendance))
        for r in h.rejections:
            base = "" if r["base_version"] is None else f" on v{r['base_version']}"
            out.print(
                f"  refused while v{r['during_version']} was current: "
                f"{r['participant'] or '?'}{base}: {r['reason']}: {r['detail']}",
                highlight=False,
            )


@dataclass
class FederationHistory:
    federation: str
    state_dir: str
    rounds: list[RoundHistory]
    rejections: list[dict[str, Any]]
    #: Per version, who was on time, late, refused or missing (see fedq.lateness).
    attendance: list[Attendance]


def open_ledger(path: Path) -> UpdateLedger:
    """A ledger for reading; one of another fedq's schema is one line saying what to do."""
    try:
        return UpdateLedger(path)
    except LedgerError as exc:
        raise fail(str(exc)) from None


def read_history(path: Path) -> FederationHistory:
    ledger = open_ledger(path)
    try:
        rounds, rejections = ledger.history(), ledger.rejections()
        return FederationHistory(
            federation=ledger.get_meta("federation") or path.parent.name,
            state_dir=str(path.parent),
            rounds=rounds,
            rejections=rejections,
            attendance=attendance(rounds, rejections),
        )
    finally:
        ledger.close()


def ledgers_under(root: Path) -> list[Path]:
    """The ledgers in ``root`` (one federation's folder, or a state dir of them), oldest
    first; none is one line saying where to look."""
    ledgers = sorted(find_ledgers(root).values(), key=lambda p: p.stat().st_mtime)
    if not ledgers:
        raise fail(f"no ledger under {root}: pass the --state-dir a coordinator or simulate used")
    return ledgers
