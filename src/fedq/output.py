"""How a long-running command writes what happens: ``--log-format auto|plain|json``.

- ``auto``: rich progress bars on a terminal, plain lines elsewhere (a bar redrawn into a
  file or a container's log leaves cut-off lines).
- ``plain``: plain lines even on a terminal, no bar and no colour.
- ``json``: one JSON object a line, for a log pipeline: every line a person would read
  (and every log record) becomes an *event* with ``timestamp`` (ISO-8601, UTC), ``level``,
  ``role`` (coordinator, participant, simulate, dashboard), ``pid``, ``federation``,
  ``event`` (its name, e.g. ``version_committed``), ``message`` (the line a person would
  have read) and the event's own fields (``version``, ``participant``, counts...). No bar,
  no ANSI, nothing else on stdout or stderr.

The JSON is written by python-json-logger's formatter on a logger of its own, so an event
is never filtered by ``FEDQ_LOG_LEVEL`` (that level applies to log records, as before).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pythonjsonlogger.json import JsonFormatter

from fedq import strict_json

LogFormat = Literal["auto", "plain", "json"]

#: The logger every JSON event goes through (never propagated: its own handler).
EVENTS = logging.getLogger("fedq.events")


class OutputSettings(BaseModel):
    """What every long-running command's output looks like (``--log-format``,
    ``FEDQ_LOG_FORMAT``, ``log_format`` in a ``--config`` file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    log_format: LogFormat = Field(
        "auto",
        description="auto: progress bars on a terminal, plain lines elsewhere; plain: plain "
        "lines; json: one JSON object a line (timestamp, level, role, event, message and "
        "the event's fields).",
    )


def json_formatter(role: str, federation: str | None) -> logging.Formatter:
    """One record, one JSON object: the fields every line carries, then the record's."""
    static: dict[str, Any] = {"role": role}
    if federation is not None:
        static["federation"] = federation
    return JsonFormatter(
        "{levelname}{name}{process}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        static_fields=static,
        defaults={"event": "log"},
        timestamp=True,
        json_serializer=_finite_dumps,
    )


def _finite_dumps(value: Any, **options: Any) -> str:
    """The formatter's ``json.dumps`` with a NaN or infinite figure (a diverged loss) as
    null: every consumer parses it, strict ones included."""
    return json.dumps(strict_json.finite(value), allow_nan=False, **options)


def use_json(role: str, federation: str | None) -> None:
    """Every event and every log record (warnings included) as JSON lines on stderr."""
    formatter = json_formatter(role, federation)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    EVENTS.handlers[:] = [handler]
    EVENTS.setLevel(logging.DEBUG)
    EVENTS.propagate = False
    logging.captureWarnings(True)  # a library's warning is a record too, not a raw line


def emit(event: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
    """One JSON event (only once :func:`use_json` ran)."""
    EVENTS.log(level, message, extra={"event": event, **fields})
