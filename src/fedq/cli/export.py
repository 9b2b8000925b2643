"""``fedq export``: a committed global model as a ``.keras`` file, for use outside fedq."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedq.cli.flags import AppOpt
from fedq.cli.running import fail, load
from fedq.console import console
from fedq.coordinator.checkpoint import CheckpointError, checkpoint_path, load_checkpoint
from fedq.coordinator.ledger_schema import LedgerError, reading
from fedq.coordinator.ledger_view import LedgerView
from fedq.participant.app import AppError


def export_command(
    app_spec: AppOpt,
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="The federation's folder (holds ledger.sqlite).")
    ],
    out: Annotated[Path, typer.Option("--out", help="The file to write, named *.keras.")],
    version: Annotated[
        int | None,
        typer.Option("--version", min=0, help="Which model version (default: the last committed)."),
    ] = None,
) -> None:
    """Write a committed global model to a file that keras.saving.load_model reads."""
    ledger_path = state_dir / "ledger.sqlite"
    if not ledger_path.exists():
        raise fail(f"no ledger in {state_dir}: pass the folder of one federation (STATE_DIR/F)")
    try:
        with LedgerView.open(ledger_path) as ledger, reading(ledger_path):
            last = ledger.last_version()
    except LedgerError as exc:
        raise fail(str(exc)) from None
    chosen = version if version is not None else (last.version if last else 0)
    checkpoint = checkpoint_path(state_dir / "models", chosen)
    if not checkpoint.exists():
        raise fail(f"no checkpoint of model v{chosen} in {state_dir / 'models'}")
    if out.suffix != ".keras":
        raise fail(f"--out {out}: Keras saves whole models to a .keras file")
    application = load(app_spec)
    export = getattr(application, "export", None)
    if not callable(export):
        raise fail(f"app {app_spec!r} cannot export a model (it has no export(weights, path))")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        export(load_checkpoint(checkpoint), out)
    except CheckpointError as exc:
        todo = (
            f"export an earlier one with --version, or roll the federation back to its last "
            f"good version with `fedq coordinator ... --from-last-good`; `fedq audit "
            f"--state-dir {state_dir}` checks every checkpoint"
        )
        raise fail(str(CheckpointError(exc.path, exc.why, todo))) from None
    except AppError as exc:
        raise fail(str(exc)) from None
    console.print(f"model v{chosen} written to {out}")
