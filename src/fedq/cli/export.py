"""``fedq export``: a committed global model written in a format other tools load without
fedq (``.keras``, a SavedModel folder, ``.tflite``, ``.onnx``).

Writing is the app's job, not the command's: an app lists what it writes in
``export_formats`` and writes it with ``export(weights, path, format)``, so a user's app
adds formats of its own and the command asks for none it does not know. The shipped Keras
apps write keras, savedmodel, tflite and onnx (:mod:`fedq.apps.keras_export`), PyTorch apps
onnx (:mod:`fedq.apps.torch_export`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fedq.cli.flags import AppSpec
from fedq.cli.running import fail, load
from fedq.console import console, plain
from fedq.coordinator.checkpoint import CheckpointError, checkpoint_path, load_checkpoint
from fedq.coordinator.ledger_schema import LedgerError, reading
from fedq.coordinator.ledger_view import LedgerView
from fedq.options import Given, with_settings
from fedq.participant.app import App, AppError

#: The format an ``--out`` path names by its suffix; no suffix names a SavedModel folder.
SUFFIX_FORMATS = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx", "": "savedmodel"}


class ExportSettings(BaseModel):
    """What to write and where: flags, ``FEDQ_*`` variables (``FEDQ_EXPORT_*`` for what is
    export's own) or ``--config`` keys."""

    model_config = ConfigDict(extra="forbid")

    app_spec: AppSpec
    state_dir: Path = Field(
        description="The federation's folder (holds ledger.sqlite).",
        json_schema_extra={"env": "FEDQ_EXPORT_STATE_DIR"},
    )
    out: Path = Field(
        description="Where to write the model: a file named *.keras, *.tflite or *.onnx, or a "
        "folder (savedmodel).",
        json_schema_extra={"env": "FEDQ_EXPORT_OUT"},
    )
    format: str | None = Field(
        None,
        description="keras, savedmodel, tflite, onnx, or another format the app writes.",
        json_schema_extra={
            "env": "FEDQ_EXPORT_FORMAT",
            "shown_default": "the one --out's suffix names",
        },
    )
    version: int | None = Field(
        None,
        ge=0,
        description="Which model version.",
        json_schema_extra={"env": "FEDQ_EXPORT_VERSION", "shown_default": "the last committed"},
    )


def chosen_format(out: Path, given: str | None) -> str:
    """``given``, else the format ``out`` names: a folder (or a path without a suffix) is a
    SavedModel, a suffix of :data:`SUFFIX_FORMATS` its format. A Failure when it names none,
    or when a folder or a known suffix names another format than the one given (a mistake,
    most likely); a path without a suffix takes any format given."""
    named = "savedmodel" if out.is_dir() else SUFFIX_FORMATS.get(out.suffix.lower())
    if given is None:
        if named is None:
            raise fail(
                f"--out {out}: its suffix names no format; pass --format, or name a .keras, "
                ".tflite or .onnx file or a folder (savedmodel)"
            )
        return named
    if named is not None and named != given and (out.suffix or out.is_dir()):
        raise fail(f"--out {out} names a {named} model, not {given}: change --out or --format")
    return given


def export_formats(application: App, spec: str) -> tuple[str, ...]:
    """The formats ``application`` writes; a Failure if it writes none."""
    formats = getattr(application, "export_formats", ())
    if not callable(getattr(application, "export", None)) or not formats:
        raise fail(
            f"app {spec!r} cannot export a model: it needs export(weights, path, format) "
            "and export_formats"
        )
    return tuple(formats)


@with_settings(ExportSettings)
def export_command(given: Given) -> None:
    """Write a committed global model for other tools: keras, savedmodel, tflite or onnx.

    The format follows --out (a file named *.keras, *.tflite or *.onnx, or a folder for a
    SavedModel) unless --format names it; an app writes only some formats (a PyTorch app:
    onnx), and says which."""
    options = given.build(ExportSettings)
    app_spec, state_dir = options.app_spec, options.state_dir
    out, format = options.out, chosen_format(options.out, options.format)
    ledger_path = state_dir / "ledger.sqlite"
    if not ledger_path.exists():
        raise fail(f"no ledger in {state_dir}: pass the folder of one federation (STATE_DIR/F)")
    try:
        with LedgerView.open(ledger_path) as ledger, reading(ledger_path):
            last = ledger.last_version()
    except LedgerError as exc:
        raise fail(str(exc)) from None
    chosen = options.version if options.version is not None else (last.version if last else 0)
    checkpoint = checkpoint_path(state_dir / "models", chosen)
    if not checkpoint.exists():
        raise fail(f"no checkpoint of model v{chosen} in {state_dir / 'models'}")
    application = load(app_spec)
    formats = export_formats(application, app_spec)
    if format not in formats:
        raise fail(f"app {app_spec!r} cannot write {format}: it writes {', '.join(formats)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        application.export(load_checkpoint(checkpoint), out, format)  # type: ignore[attr-defined]
    except CheckpointError as exc:
        todo = (
            f"export an earlier one with --version, or roll the federation back to its last "
            f"good version with `fedq coordinator ... --from-last-good`; `fedq audit "
            f"--state-dir {state_dir}` checks every checkpoint"
        )
        raise fail(str(CheckpointError(exc.path, exc.why, todo))) from None
    except AppError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # the app's code, or the converter's: one line naming it
        first = (str(exc).strip().splitlines() or [""])[0]
        why = f"{type(exc).__name__}: {first}"
        raise fail(f"app {app_spec!r} failed to write {format}: {why}") from exc
    console.print(plain(f"model v{chosen} written to {out} ({format})"))
