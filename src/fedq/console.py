"""What a person sees: a progress bar over rounds, a row per committed round, a summary.

Every string that a participant may have written (ids, reasons and details from the
ledger, metric names) is printed through :func:`plain`: as a rich ``Text`` it is never
read as markup (an id ``[/x]`` would stop the print), and its control characters are
escaped (``\x1b[2J`` would clear the operator's screen).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from fedq.coordinator.attendance import Attendance, describe_late
from fedq.coordinator.observers import CoordinatorObserver, UpdateSeen
from fedq.coordinator.records import VersionSummary
from fedq.coordinator.result import FederationResult
from fedq.coordinator.stall import Stall
from fedq.output import LogFormat, emit, use_json
from fedq.participant.worker import LocalUpdate
from fedq.runtime.printable import printable


class EventConsole(Console):
    """rich's console, and what ``--log-format`` (:mod:`fedq.output`) makes of it: in
    ``plain`` it is never a terminal (no bar, no colour); in ``json`` whatever is printed
    becomes a JSON event, and :meth:`event` writes one with its fields."""

    log_format: LogFormat = "auto"

    @property
    def is_terminal(self) -> bool:
        return self.log_format == "auto" and super().is_terminal

    def use(self, log_format: LogFormat, role: str, federation: str | None = None) -> None:
        """Write as ``log_format`` says from now on; ``role`` and ``federation`` go into
        every JSON line."""
        self.log_format = log_format
        if log_format != "auto":
            self._color_system = None  # chosen when it was made, for a terminal
        if log_format == "json":
            use_json(role, federation)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if self.log_format != "json":
            super().print(*objects, **kwargs)
            return
        with self.capture() as captured:  # what a person would have read, without styles
            super().print(*objects, **kwargs)
        if text := captured.get().rstrip("\n"):
            emit("message", text)

    def event(
        self, name: str, message: str | Text, level: int = logging.INFO, **fields: Any
    ) -> None:
        """An event: in JSON, ``name``, ``message`` and ``fields``; else the message."""
        if self.log_format == "json":
            emit(name, printable(str(message), limit=None), level, **fields)
        else:
            super().print(message if isinstance(message, Text) else plain(message))


console = EventConsole(stderr=True, soft_wrap=True)


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


class _Bar:
    """A rich progress bar on a terminal; elsewhere (a file, a pipe, a container's log)
    nothing is drawn and :meth:`line` prints plain lines: a bar redrawn into a file leaves
    cut-off lines and control characters in it."""

    def __init__(self, *columns: ProgressColumn) -> None:
        self.live = console.is_terminal
        self.progress = Progress(*columns, TimeElapsedColumn(), console=console)

    def __enter__(self) -> None:
        if self.live:
            self.progress.start()

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def line(self, text: str | Text, event: str, **fields: Any) -> None:
        """A line above the bar (on a terminal) or on its own; in JSON, the event
        ``event`` with ``fields``."""
        console.event(event, text, **fields)


class RoundProgress(CoordinatorObserver):
    """A :class:`~fedq.coordinator.service.CoordinatorObserver` drawing with rich on a
    terminal; elsewhere a plain line per opened and per committed version."""

    def __init__(self, rounds: int, quorum: int) -> None:
        self.quorum = quorum
        self.bar = _Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
        )
        self.progress = self.bar.progress
        self.task = self.progress.add_task("rounds", total=rounds, status="starting")
        self.accepted = 0
        self.alive: int | None = None
        self.rejected: Counter[str] = Counter()

    def __enter__(self) -> RoundProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def _status(self) -> str:
        parts = [f"{self.accepted}/{self.quorum} updates"]
        if rejected := sum(self.rejected.values()):
            parts.append(f"{rejected} rejected")
        if self.alive is not None:
            parts.append(f"{self.alive} participants alive")
        return escape(printable(", ".join(parts), limit=None))  # a markup column

    def participants_alive(self, alive: int) -> None:
        if not self.bar.live and alive != self.alive:
            self.bar.line(f"participants alive: {alive}", "participants_alive", alive=alive)
        self.alive = alive
        self.progress.update(self.task, status=self._status())

    def version_opened(self, version: int, round_: int | None) -> None:
        self.accepted = 0
        what = f"round {round_} (model v{version})" if round_ else f"after model v{version}"
        self.progress.update(self.task, description=what, status=self._status())
        if not self.bar.live:
            self.bar.line(
                f"{what}: collecting {self.quorum} updates",
                "version_opened",
                version=version + 1,  # the one being collected
                current=version,
                round=round_,
                needs=self.quorum,
            )

    def update_seen(self, update: UpdateSeen) -> None:
        if update.accepted:
            self.accepted += 1
        else:
            self.rejected[update.reason or "?"] += 1
        self.progress.update(self.task, status=self._status())

    def version_stalled(self, version: int, stall: Stall | None) -> None:
        if stall is None:
            self.bar.line(f"version {version} can close now", "version_can_close", version=version)
            return
        self.bar.line(
            stall.describe(),
            "version_cannot_close",
            version=version,
            needs=stall.needs,
            has=stall.has,
            alive=stall.alive,
            may_send=stall.may_send,
        )

    def version_committed(self, row: VersionSummary) -> None:
        self.progress.update(self.task, advance=1, description=f"committed model v{row.version}")
        stale = sum(1 for _, _, tau in row.updates if tau > 0)
        privacy = "" if row.epsilon is None else f"  epsilon {row.epsilon:.3g}"
        where = f"round {row.round}" if row.round is not None else f"version {row.version}"
        self.bar.line(
            f"{where}: model v{row.version} from {row.n_updates} updates"
            f"{f' ({stale} stale)' if stale else ''} ({row.closed_by}) in {row.seconds:.2f}s  "
            f"loss {_fmt(row.metrics, 'loss')}  accuracy {_fmt(row.metrics, 'accuracy')}{privacy}",
            "version_committed",
            version=row.version,
            round=row.round,
            updates=row.n_updates,
            stale=stale,
            closed_by=row.closed_by,
            participants=list(row.participants),
            seconds=round(row.seconds, 3),
            metrics=row.metrics,
            epsilon=row.epsilon,
        )


class ParticipantProgress:
    """A line per trained round for a few participants; a running count for many (on a
    terminal a bar, elsewhere a line each time every participant sent one more)."""

    LINES_UP_TO = 8

    def __init__(self, count: int) -> None:
        self.count = count
        self.sent = 0
        self.bar = _Bar(
            TextColumn("[bold]{task.description}"),
            TextColumn("{task.completed} updates sent"),
            TextColumn("{task.fields[status]}"),
        )
        self.progress = self.bar.progress
        self.task = self.progress.add_task(
            f"{count} participants", total=None, status="waiting for the first model"
        )

    def __enter__(self) -> ParticipantProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def trained(self, r: LocalUpdate) -> None:
        status = (
            f"last: {r.participant} on model v{r.version}, {r.num_examples} examples in "
            f"{r.seconds:.2f}s, loss {_fmt(r.metrics, 'loss')}"
        )
        self.sent += 1
        self.progress.update(self.task, advance=1, status=escape(printable(status, limit=None)))
        if self.count <= self.LINES_UP_TO:
            self.bar.line(
                plain(
                    f"{r.participant}: model v{r.version}: {r.num_examples} "
                    f"examples in {r.seconds:.2f}s, loss {_fmt(r.metrics, 'loss')}, "
                    f"accuracy {_fmt(r.metrics, 'accuracy')}, sent {human_bytes(r.update_bytes)}"
                ),
                "update_sent",
                participant=r.participant,
                version=r.version,
                examples=r.num_examples,
                seconds=round(r.seconds, 3),
                metrics=r.metrics,
                bytes=r.update_bytes,
            )
        elif not self.bar.live and self.sent % self.count == 0:
            self.bar.line(
                plain(f"{self.count} participants: {self.sent} updates sent"),
                "updates_sent",
                participants=self.count,
                sent=self.sent,
            )


def print_summary(result: FederationResult) -> None:
    if console.log_format == "json":
        console.event(
            "federation_done",
            f"federation {result.federation}: {result.rounds_completed} versions committed, "
            f"model v{result.model_version}",
            mode=result.mode,
            versions_committed=result.rounds_completed,
            version=result.model_version,
            updates_incorporated=result.updates_incorporated,
            updates_rejected=result.updates_rejected,
            rejected_by_reason=result.rejected_by_reason,
            duplicates=result.duplicates,
            epsilon=result.epsilon,
            final_metrics=result.final_metrics,
            wall_seconds=round(result.wall_seconds, 3),
            state_dir=str(result.state_dir),
        )
        return
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
