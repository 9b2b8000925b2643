"""The ``fedq`` command: one module per subcommand, registered here in the order
``fedq --help`` lists them. Every user mistake ends in one line saying what to do (exit 2).
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Annotated, Any

import typer
from rich.text import Text
from typer.core import TyperOption

from fedq.cli.audit import audit_command
from fedq.cli.broker import broker_app
from fedq.cli.coordinator import coordinator_command
from fedq.cli.dashboard import dashboard_command
from fedq.cli.deploy import deploy_app
from fedq.cli.export import export_command
from fedq.cli.history import history_command
from fedq.cli.participant import participant_command
from fedq.cli.partition import partition_command
from fedq.cli.running import Failure
from fedq.cli.simulate import simulate_command
from fedq.cli.teardown import teardown_command
from fedq.console import console, plain
from fedq.options import OptionsError
from fedq.runtime.tuning import tune_process

__all__ = ["app", "main"]

app = typer.Typer(
    help="fedq: federated learning over RabbitMQ. Start with `fedq simulate --help`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
)


def _version(shown: bool) -> None:
    if shown:
        print(f"fedq {metadata.version('fedq')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print fedq's version and exit."
        ),
    ] = False,
) -> None:
    """fedq: federated learning over RabbitMQ. Start with `fedq simulate --help`."""


def _plain_type(param: TyperOption, ctx: Any) -> str | None:
    """The type column of --help in words a user reads, not Python's: none for a flag,
    ``INTEGER``, ``FLOAT``, ``TEXT``, ``PATH``, a list's item type followed by ``...``,
    a choice's values as they are."""
    if param.is_flag or param.count:
        return None
    shown = TyperOption.display_type(param, ctx).strip("<>")
    listed = shown.startswith("list[")
    shown = shown.removeprefix("list[").removesuffix("]")
    word = _TYPE_WORDS.get(shown.lower(), shown)
    return f"{word} ..." if listed else word


_TYPE_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "file": "PATH"}
TyperOption.display_type_rich = _plain_type  # type: ignore[method-assign,assignment]
app.add_typer(broker_app, name="broker")
app.add_typer(deploy_app, name="deploy")
#: Each command, in the order ``fedq --help`` lists it, with the summary that list shows:
#: one whole sentence that fits a line of an 80-column terminal (the docstring's first
#: sentence is the command's own --help, and may be longer).
COMMANDS: list[tuple[str, Callable[..., Any], str]] = [
    ("simulate", simulate_command, "Run a coordinator and N participants on this machine."),
    ("coordinator", coordinator_command, "Run the coordinator of one federation on RabbitMQ."),
    ("participant", participant_command, "Run one participant (or --count ones) on RabbitMQ."),
    ("history", history_command, "Print committed versions, who was late, what was refused."),
    ("audit", audit_command, "Check a ledger's hash chain and its checkpoints' sha256."),
    ("partition", partition_command, "Print how a partition scheme splits an app's labels."),
    ("export", export_command, "Write a committed model as keras, savedmodel, tflite or onnx."),
    ("dashboard", dashboard_command, "Serve a live page of the federations and their queues."),
    ("teardown", teardown_command, "Delete a federation's queues and exchanges from the broker."),
]
for name, command, summary in COMMANDS:
    app.command(name, short_help=summary)(command)


def _reflow(group: typer.Typer) -> None:
    """Each command's help as whole paragraphs: rich keeps a docstring's line breaks, and
    a line cut where the source was wrapped shows as a sentence broken mid-way."""
    for info in group.registered_commands:
        doc = info.help if info.help is not None else inspect.getdoc(info.callback)
        if doc:
            info.help = "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n"))
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _reflow(sub.typer_instance)


_reflow(app)


def main() -> None:
    tune_process()
    try:
        app()
    except (Failure, OptionsError) as exc:
        status = exc.status if isinstance(exc, Failure) else 2
        if console.log_format == "json":
            console.event("failed", f"fedq: {exc}", logging.ERROR, status=status)
            sys.exit(status)
        lines = (plain(line) for line in str(exc).split("\n"))  # no markup, no control
        console.print(Text("fedq:", "bold red"), Text("\n").join(lines), soft_wrap=True)
        sys.exit(status)
    except KeyboardInterrupt:
        sys.exit(130)
