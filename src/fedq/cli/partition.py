"""``fedq partition``: how a scheme splits an app's training labels, as a table and a plot.

The app's module must define ``load_train() -> (x, y)``, every training sample before the
split (the shipped Keras apps do). The split is the one each participant computes for
itself (:func:`fedq.participant.partitions.split`), so what this prints is what a federation
run with the same scheme and seed trains on.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from fedq.cli.flags import AppSpec
from fedq.console import console
from fedq.options import Given, OptionsError, with_settings
from fedq.participant.app import AppError, load_app
from fedq.participant.partitions import split
from fedq.participant.scheme import DESCRIBED, Scheme
from fedq.plot import PlotUnavailable, pyplot, save


class PartitionError(OptionsError):
    """A flag or app ``fedq partition`` cannot use; ``fedq.cli.main`` prints it in one line."""


def label_histogram(labels: np.ndarray, parts: list[np.ndarray]) -> tuple[list[str], np.ndarray]:
    """(label names, counts[participant, label]) of each part's samples."""
    flat = np.asarray(labels).reshape(len(labels))
    values, codes = np.unique(flat, return_inverse=True)
    counts = np.stack([np.bincount(codes[p], minlength=len(values)) for p in parts])
    names = [str(int(v)) if float(v).is_integer() else str(v) for v in values]
    return names, counts


def histogram_table(names: list[str], counts: np.ndarray) -> Table:
    """One row per participant: its samples, then its samples of each label."""
    table = Table()
    table.add_column("participant", justify="right")
    table.add_column("samples", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for i, row in enumerate(counts):
        table.add_row(str(i), str(int(row.sum())), *(str(int(c)) for c in row))
    return table


def plot_histogram(names: list[str], counts: np.ndarray, title: str, path: Path) -> None:
    """A stacked bar per participant, one colour per label."""
    try:
        plt = pyplot()
    except PlotUnavailable as exc:
        raise PartitionError(str(exc)) from None
    figure, axis = plt.subplots(figsize=(max(6.0, 0.4 * len(counts) + 3), 4))
    bottom = np.zeros(len(counts))
    participants = np.arange(len(counts))
    for j, name in enumerate(names):
        axis.bar(participants, counts[:, j], bottom=bottom, label=name)
        bottom += counts[:, j]
    axis.set_title(title)
    axis.set_xlabel("participant")
    axis.set_ylabel("samples")
    axis.set_xticks(participants)
    axis.legend(title="label", fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    figure.tight_layout()
    save(figure, path)


def _training_labels(app_spec: str) -> np.ndarray:
    try:
        load_app(app_spec)  # the same checks (and one-line errors) as every other command
    except AppError as exc:
        raise PartitionError(str(exc)) from None
    module = importlib.import_module(app_spec.partition(":")[0])
    load_train = getattr(module, "load_train", None)
    if not callable(load_train):
        raise PartitionError(
            f"app {app_spec!r}: its module defines no load_train() returning the training "
            "(x, y), which `fedq partition` needs to read the labels"
        )
    try:
        _, y = load_train()
    except AppError as exc:
        raise PartitionError(str(exc)) from None
    return np.asarray(y)


class PartitionSettings(BaseModel):
    """What to split: flags, ``FEDQ_*`` variables or ``--config`` keys (:mod:`fedq.options`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app_spec: AppSpec
    participants: int = Field(
        ge=1, description="How many participants.", json_schema_extra={"flag": "-n"}
    )
    scheme: str = Field(
        "iid",
        description=f"How to split the data: {DESCRIBED}.",
        json_schema_extra={"env": "FEDQ_PARTITION_SCHEME"},
    )
    seed: int | None = Field(
        None,
        description="Split seed.",
        json_schema_extra={
            "env": "FEDQ_PARTITION_SEED",
            "shown_default": "the app module's SEED, else 0",
        },
    )
    plot: Path | None = Field(
        None,
        description="Write a stacked bar chart (PNG) here.",
        json_schema_extra={"env": "FEDQ_PARTITION_PLOT"},
    )


@with_settings(PartitionSettings)
def partition_command(given: Given) -> None:
    """Print each participant's label histogram under a partition scheme (and plot it)."""
    options = given.build(PartitionSettings)
    app_spec, participants, scheme = options.app_spec, options.participants, options.scheme
    seed, plot = options.seed, options.plot
    try:
        parsed = Scheme.parse(scheme)
    except ValueError as exc:
        raise PartitionError(f"--scheme: {exc}") from None
    labels = _training_labels(app_spec)
    if seed is None:  # the seed the app itself passes to shard(), so the split matches a run
        seed = int(getattr(importlib.import_module(app_spec.partition(":")[0]), "SEED", 0))
    try:
        parts = split(labels, participants, parsed, seed)
    except ValueError as exc:
        raise PartitionError(str(exc)) from None
    names, counts = label_histogram(labels, parts)

    # stdout: the histogram is this command's output; piped, it is not cut to 80 columns.
    out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    out.print(f"{app_spec} split {parsed} (seed {seed}), samples per label:", highlight=False)
    out.print(histogram_table(names, counts))
    left_out = len(labels) - int(counts.sum())
    if left_out:
        console.print(
            f"{left_out} of {len(labels)} samples are held by no participant: "
            f"{participants} participants x {parsed} cover fewer than the {len(names)} labels"
        )
    if plot is not None:
        plot_histogram(names, counts, f"{app_spec}: {parsed}", plot)
        console.print(f"plot written to {plot}")
