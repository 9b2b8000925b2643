"""``fedq history --plot``: held-out loss and accuracy per round, one line per federation.

matplotlib is an optional extra (``pip install 'fedq[plot]'``); it is imported only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedq.coordinator.records import VersionSummary


class PlotUnavailable(RuntimeError):
    pass


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only (no display needed), or PlotUnavailable
    saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(
            "plotting needs matplotlib: pip install 'fedq[plot]' (or pip install matplotlib)"
        ) from None
    return plt


def save(figure: Any, path: Path) -> None:
    """Write ``figure`` (PNG, or any format matplotlib knows from the suffix) and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot().close(figure)


def plot_history(histories: Sequence[tuple[str, list[VersionSummary]]], path: Path) -> None:
    """Write a PNG (or any format matplotlib knows from the suffix) of loss and accuracy."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, (loss_axis, accuracy_axis) = plt.subplots(
        1, 2, figsize=(10, 4), constrained_layout=True
    )
    for name, rounds in histories:
        xs = [r.round for r in rounds]
        for axis, key in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
            ys = [r.metrics.get(key, float("nan")) for r in rounds]
            axis.plot(xs, ys, marker="o", label=name)
    for axis, title in ((loss_axis, "held-out loss"), (accuracy_axis, "held-out accuracy")):
        axis.set_title(title)
        axis.set_xlabel("round")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    save(figure, path)
