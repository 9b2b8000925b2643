"""What a person sees: a progress bar over rounds, a row per committed round, a summary.

Every string that a participant may have written (ids, reasons and details from the
ledger, metric names) is printed through :func:`plain`: as a rich ``Text`` it is never
read as markup (an id ``[/x]`` would stop the print), and its control characters are
escaped (``\x1b[2J`` would clear the operator's screen).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fedq.coordinator.attendance import Attendance, describe_late
from fedq.coordinator.observers import CoordinatorObserver, UpdateSeen
from fedq.coordinator.records import VersionSummary
from fedq.coordinator.service import FederationResult
from fedq.participant.worker import LocalUpdate
from fedq.runtime.printable import printable

console = Console(stderr=True, soft_wrap=True)


def plain(text: object, style: str = "") -> Text:
    """``text`` as written, whatever it holds: no markup, control characters escaped."""
    return Text(printable(text, limit=None), style=style)


def _fmt(metrics: dict[str, float], key: str) -> str:
    value = metrics.get(key)
    return "-" if value is None else f"{value:.4f}"


def _updates(row: VersionSummary) -> str:
    """Contributors; a stale one with its base version and staleness: ``p3 (v2, tau 1)``."""
    return ", ".join(
        p if tau == 0 else f"{p} (v{base}, tau {tau})" for p, base, tau in row.updates
    ) or ", ".join(row.participants)


def history_table(
    rows: Iterable[VersionSummary], title: str, attendance: Iterable[Attendance] = ()
) -> Table:
    """A row per committed version; with ``attendance`` (:mod:`fedq.coordinator.attendance`),
    who was late and who was missing in it. ``loss`` and ``accuracy`` are the app's held-out
    evaluation of the version; ``local accuracy`` is what its updates' participants measured
    on their own data while training, weighted by examples; ``federated eval`` (with
    ``--evaluate-local``) what they measured on data they held out, on the model they were
    sent, with its range across participants."""
    rows = list(rows)
    private = any(r.epsilon is not None for r in rows)
    who = {a.version: a for a in attendance}
    table = Table(title=plain(title))
    columns = ["version", "round", "closed by", "updates", "participants", "refused"]
    columns += ["late", "missing"] if who else []
    local = any("accuracy" in r.local_metrics for r in rows)
    evaluated = any(r.local_accuracy_range is not None for r in rows)
    columns += ["bytes in", "loss", "accuracy"] + (["local accuracy"] if local else [])
    columns += ["federated eval"] if evaluated else []
    columns += ["seconds"] + (["epsilon"] if private else [])
    left = ("participants", "refused", "late", "missing")
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right")
    for row in rows:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(row.rejected.items())) or "-"
        cells = [
            str(row.version),
            "-" if row.round is None else str(row.round),
            row.closed_by,
            str(row.n_updates),
            _updates(row),
            refused,
            *(_attendance(who.get(row.version)) if who else []),
            human_bytes(row.update_bytes),
            _fmt(row.metrics, "loss"),
            _fmt(row.metrics, "accuracy"),
            *([_fmt(row.local_metrics, "accuracy")] if local else []),
            *([_spread(row)] if evaluated else []),
            f"{row.seconds:.2f}",
        ]
        if private:
            cells.append("-" if row.epsilon is None else f"{row.epsilon:.3g}")
        table.add_row(*(plain(c) for c in cells))
    return table


def _spread(row: VersionSummary) -> str:
    """Federated evaluation of the model its updates were trained on: the weighted mean of
    the participants' ``local_accuracy`` and its range, ``0.812 (0.61-0.93)``."""
    if row.local_accuracy_range is None:
        return "-"
    low, high = row.local_accuracy_range
    return f"{row.local_metrics['local_accuracy']:.3f} ({low:.2f}-{high:.2f})"


def _attendance(a: Attendance | None) -> list[str]:
    """The late and missing cells of a version."""
    if a is None:
        return ["-", "-"]
    return [describe_late(a.late) or "-", ", ".join(a.missing) or "-"]


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class RoundProgress(CoordinatorObserver):
    """A :class:`~fedq.coordinator.service.CoordinatorObserver` drawing with rich."""

    def __init__(self, rounds: int, quorum: int) -> None:
        self.quorum = quorum
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        )
        self.task = self.progress.add_task("rounds", total=rounds, status="starting")
        self.accepted = 0
        self.alive: int | None = None
        self.rejected: Counter[str] = Counter()

    def __enter__(self) -> RoundProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _status(self) -> str:
        parts = [f"{self.accepted}/{self.quorum} updates"]
        if rejected := sum(self.rejected.values()):
            parts.append(f"{rejected} rejected")
        if self.alive is not None:
            parts.append(f"{self.alive} participants alive")
        return escape(printable(", ".join(parts), limit=None))  # a markup column

    def participants_alive(self, alive: int) -> None:
        self.alive = alive
        self.progress.update(self.task, status=self._status())

    def version_opened(self, version: int, round_: int | None) -> None:
        self.accepted = 0
        what = f"round {round_} (model v{version})" if round_ else f"after model v{version}"
        self.progress.update(self.task, description=what, status=self._status())

    def update_seen(self, update: UpdateSeen) -> None:
        if update.accepted:
            self.accepted += 1
        else:
            self.rejected[update.reason or "?"] += 1
        self.progress.update(self.task, status=self._status())

    def version_committed(self, row: VersionSummary) -> None:
        self.progress.update(self.task, advance=1, description=f"committed model v{row.version}")
        stale = sum(1 for _, _, tau in row.updates if tau > 0)
        privacy = "" if row.epsilon is None else f"  epsilon {row.epsilon:.3g}"
        where = f"round {row.round}" if row.round is not None else f"version {row.version}"
        self.progress.console.print(
            f"{where}: model v{row.version} from {row.n_updates} updates"
            f"{f' ({stale} stale)' if stale else ''} ({row.closed_by}) in {row.seconds:.2f}s  "
            f"loss {_fmt(row.metrics, 'loss')}  accuracy {_fmt(row.metrics, 'accuracy')}{privacy}"
        )


class ParticipantProgress:
    """A line per trained round for a few participants; a running count for many."""

    LINES_UP_TO = 8

    def __init__(self, count: int) -> None:
        self.count = count
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            TextColumn("{task.completed} updates sent"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        )
        self.task = self.progress.add_task(
            f"{count} participants", total=None, status="waiting for the first model"
        )

    def __enter__(self) -> ParticipantProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def trained(self, r: LocalUpdate) -> None:
        status = (
            f"last: {r.participant} on model v{r.version}, {r.num_examples} examples in "
            f"{r.seconds:.2f}s, loss {_fmt(r.metrics, 'loss')}"
        )
        self.progress.update(self.task, advance=1, status=escape(printable(status, limit=None)))
        if self.count <= self.LINES_UP_TO:
            self.progress.console.print(
                plain(
                    f"{r.participant}: model v{r.version}: {r.num_examples} "
                    f"examples in {r.seconds:.2f}s, loss {_fmt(r.metrics, 'loss')}, "
                    f"accuracy {_fmt(r.metrics, 'accuracy')}, sent {human_bytes(r.update_bytes)}"
                )
            )


def print_summary(result: FederationResult) -> None:
    table = Table(title=plain(f"federation {result.federation}"), show_header=False)
    table.add_row("mode", result.mode)
    table.add_row("versions committed", str(result.rounds_completed))
    table.add_row("model version", str(result.model_version))
    table.add_row("updates incorporated", str(result.updates_incorporated))
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(result.rejected_by_reason.items()))
    table.add_row(
        "updates rejected",
        plain(f"{result.updates_rejected}" + (f" ({rejected})" if rejected else "")),
    )
    table.add_row("duplicates (acked, not applied)", str(result.duplicates))
    if result.epsilon is not None:
        table.add_row("privacy spent (epsilon)", f"{result.epsilon:.4g}")
    for key, value in sorted(result.final_metrics.items()):
        table.add_row(plain(f"final {key}"), f"{value:.4f}")
    table.add_row("wall seconds", f"{result.wall_seconds:.1f}")
    table.add_row("state dir", plain(result.state_dir))
    console.print(table)
