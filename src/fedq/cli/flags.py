"""Settings several commands share, declared once as annotated field types for their
settings models: ``--app``, ``--broker``, ``--federation``, ``--state-dir``, ``--report``,
``--verbose`` and ``--management-url``. A command's model declares a field of one of these
types, and :mod:`fedq.options` makes it a flag, a ``FEDQ_*`` variable and a ``--config``
key; one name (``FEDQ_BROKER_URL``) means the same in every command that takes it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

AppSpec = Annotated[
    str,
    Field(
        description="The app, package.module:attr.",
        json_schema_extra={"flag": "--app", "env": "FEDQ_APP"},
    ),
]
#: ``broker_url``: ``FEDQ_BROKER_URL``, also read from a ``fedq.env`` file.
BrokerUrl = Annotated[
    str | None,
    Field(
        description="RabbitMQ URL.",
        json_schema_extra={
            "flag": "--broker",
            "shown_default": "FEDQ_BROKER_URL in a fedq.env file here, else the local broker",
        },
    ),
]
FederationName = Annotated[str, Field(description="Federation name.")]
#: ``state_dir``: ``FEDQ_STATE_DIR``, also read from a ``fedq.env`` file.
StateDirRoot = Annotated[
    Path | None,
    Field(
        description="Checkpoints and ledger, a folder per federation.",
        json_schema_extra={
            "shown_default": "FEDQ_STATE_DIR in a fedq.env file here, else fedq-state"
        },
    ),
]
ReportPath = Annotated[Path | None, Field(description="Write a JSON report here.")]
Verbose = Annotated[bool, Field(description="Log what happens.", json_schema_extra={"flag": "-v"})]
ManagementUrl = Annotated[
    str | None,
    Field(
        description="RabbitMQ's management API, which lists the queues.",
        json_schema_extra={"shown_default": "the broker's host, port 15672, the broker's login"},
    ),
]
