"""What a person sees: a progress bar over rounds, a row per committed round, a summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedq.coordinator.ledger import RoundHistory
from fedq.coordinator.service import CoordinatorObserver, FederationResult
from fedq.participant.worker import TrainedRound

console = Console(stderr=True, soft_wrap=True)


def _fmt(metrics: dict[str, float], key: str) -> str:
    value = metrics.get(key)
    return "-" if value is None else f"{value:.4f}"


def history_table(rows: Iterable[RoundHistory], title: str) -> Table:
    table = Table(title=title)
    for column in (
        "round",
        "version",
        "closed by",
        "updates",
        "participants",
        "rejected",
        "loss",
        "accuracy",
        "seconds",
    ):
        table.add_column(
            column, justify="left" if column in ("participants", "rejected") else "right"
        )
    for row in rows:
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(row.rejected.items())) or "-"
        table.add_row(
            str(row.round),
            str(row.version),
            row.closed_by,
            str(row.n_updates),
            ", ".join(row.participants),
            rejected,
            _fmt(row.metrics, "loss"),
            _fmt(row.metrics, "accuracy"),
            f"{row.seconds:.2f}",
        )
    return table


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
        return ", ".join(parts)

    def participants_alive(self, alive: int) -> None:
        self.alive = alive
        self.progress.update(self.task, status=self._status())

    def round_opened(self, round_: int, version: int) -> None:
        self.accepted = 0
        self.progress.update(
            self.task, description=f"round {round_} (model v{version})", status=self._status()
        )

    def update_seen(self, participant: str | None, accepted: bool, reason: str | None) -> None:
        if accepted:
            self.accepted += 1
        else:
            self.rejected[reason or "?"] += 1
        self.progress.update(self.task, status=self._status())

    def round_committed(self, row: RoundHistory) -> None:
        self.progress.update(self.task, advance=1, description=f"committed model v{row.version}")
        self.progress.console.print(
            f"round {row.round}: model v{row.version} from {row.n_updates} updates "
            f"({row.closed_by}) in {row.seconds:.2f}s  loss {_fmt(row.metrics, 'loss')}  "
            f"accuracy {_fmt(row.metrics, 'accuracy')}"
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

    def trained(self, r: TrainedRound) -> None:
        status = (
            f"last: {r.participant} round {r.round}, {r.num_examples} examples in "
            f"{r.seconds:.2f}s, loss {_fmt(r.metrics, 'loss')}"
        )
        self.progress.update(self.task, advance=1, status=status)
        if self.count <= self.LINES_UP_TO:
            self.progress.console.print(
                f"{r.participant}: round {r.round} (model v{r.version}): {r.num_examples} "
                f"examples in {r.seconds:.2f}s, loss {_fmt(r.metrics, 'loss')}, "
                f"accuracy {_fmt(r.metrics, 'accuracy')}, sent {human_bytes(r.update_bytes)}"
            )


def print_summary(result: FederationResult) -> None:
    table = Table(title=f"federation {result.federation}", show_header=False)
    table.add_row("rounds completed", str(result.rounds_completed))
    table.add_row("model version", str(result.model_version))
    table.add_row("updates incorporated", str(result.updates_incorporated))
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(result.rejected_by_reason.items()))
    table.add_row(
        "updates rejected", f"{result.updates_rejected}" + (f" ({rejected})" if rejected else "")
    )
    table.add_row("duplicates", str(result.duplicates))
    for key, value in sorted(result.final_metrics.items()):
        table.add_row(f"final {key}", f"{value:.4f}")
    table.add_row("wall seconds", f"{result.wall_seconds:.1f}")
    table.add_row("state dir", result.state_dir)
    console.print(table)
