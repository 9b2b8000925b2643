"""Typed messages: one pydantic model per message kind, validated at the boundary.

Every message carries ``v`` (the schema version) and ``federation``. Updates and models
also carry tensors, which are not part of these models: the codec appends them to the
same msgpack map (see :mod:`fedq.messages.codec`), so metadata can be validated before a
single tensor byte is looked at.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

from fedq.messages.chunks import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES

SCHEMA_VERSION: Literal[1] = 1

#: Every integer of every message is at most this: 2**53 - 1, the largest integer a float64
#: holds exactly. So each one fits SQLite's INTEGER (int64) in the ledger, survives the
#: float arithmetic it meets (FedAvg weights are float64 sums of ``num_examples``; a version
#: number + 1 never overflows), and reads back exactly from JSON in JavaScript (the
#: dashboard). A body beyond it is refused as ``schema``, before anything is stored.
MAX_INT = 2**53 - 1
#: Every float of every message is finite (``allow_inf_nan=False``); a metric's value is
#: within +-MAX_METRIC: float32 (TensorBoard's scalars) holds it, and weighted by the
#: largest ``num_examples`` it stays far inside float64.
MAX_METRIC = 1e30
#: Metrics per message, and what a metric's name may be: they become ledger JSON,
#: TensorBoard tags, table columns and plot series, so few, short and printable.
MAX_METRICS = 32

#: Names and ids travel into logs, terminals, the ledger and web pages: short, and of
#: characters that mean nothing to a terminal, to rich markup or to HTML.
FederationName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ParticipantId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
UpdateId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
_METRIC_NAME = r"^[A-Za-z0-9_./-]{1,64}$"
MetricName = Annotated[str, Field(pattern=_METRIC_NAME)]
MetricValue = Annotated[float, Field(ge=-MAX_METRIC, le=MAX_METRIC)]


def _few_metrics(value: object) -> object:
    """Counted before any is validated: 50,000 keys are refused for their number alone."""
    if isinstance(value, Mapping) and len(value) > MAX_METRICS:
        raise ValueError(f"at most {MAX_METRICS} metrics, not {len(value)}")
    return value


Metrics = Annotated[dict[MetricName, MetricValue], BeforeValidator(_few_metrics)]
#: A count, a version or a round: never negative, never beyond MAX_INT.
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
#: Seconds: a duration, or a Unix time (``at``).
Seconds = Annotated[float, Field(ge=0, le=MAX_INT)]


def wire_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics of ``metrics`` a message may carry: the first MAX_METRICS whose name and
    value fit (a diverged loss of NaN is left out, not sent to be refused)."""
    fits: dict[str, float] = {}
    for name, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if isinstance(name, str) and _metric_name.match(name) and abs(number) <= MAX_METRIC:
            fits[name] = number
            if len(fits) == MAX_METRICS:
                break
    return fits


_metric_name = re.compile(_METRIC_NAME.replace("$", r"\Z"))  # "$" would take "a\n"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    v: Literal[1] = SCHEMA_VERSION
    federation: FederationName


class UpdateMeta(_Message):
    """A participant's weight delta, computed against model ``base_version``."""

    kind: Literal["update"] = "update"
    update_id: UpdateId = Field(default_factory=lambda: str(uuid.uuid4()))
    participant: ParticipantId
    #: The round it was trained for; None in async mode, which has no rounds.
    round: int | None = Field(default=None, ge=1, le=MAX_INT)
    base_version: Count = Field(description="the model version the delta is against")
    num_examples: int = Field(gt=0, le=MAX_INT, description="the FedAvg weight of this update")
    metrics: Metrics = Field(default_factory=dict)
    train_seconds: Seconds = 0.0


#: The most participants one model may name as sampled.
MAX_SAMPLED = 100_000


class ModelMeta(_Message):
    """A global model: version ``version``, which participants train on in round ``round``
    (None in async mode: train on it whenever free)."""

    kind: Literal["model"] = "model"
    version: Count
    round: int | None = Field(default=None, ge=1, le=MAX_INT)
    rounds_total: int = Field(ge=1, le=MAX_INT, description="versions the federation will commit")
    #: The coordinator's chunk size, the one setting both sides must share: a model larger
    #: comes in chunks of at most this many raw tensor bytes, and a participant cuts the
    #: update it trains on this model into chunks of the same size. A model without it
    #: comes from a coordinator older than the field, which used the default unless told
    #: otherwise. A participant older than the field refuses a model with it (extra fields
    #: are forbidden): upgrade participants first.
    chunk_bytes: int = Field(
        DEFAULT_CHUNK_BYTES,
        ge=MIN_CHUNK_BYTES,
        le=MAX_CHUNK_BYTES,
        description="the coordinator's chunk size, which updates follow",
    )
    #: With client sampling (``--sample-fraction``): the participants drawn to train on
    #: this model; the others ack it and wait for the next. None: everyone trains. (A
    #: participant older than the field refuses every model that has it: upgrade first.)
    sampled: list[ParticipantId] | None = Field(default=None, max_length=MAX_SAMPLED)


class RoundOpen(_Message):
    kind: Literal["round.open"] = "round.open"
    round: int = Field(ge=1, le=MAX_INT)
    version: Count
    quorum: int = Field(ge=1, le=MAX_INT)
    deadline_seconds: Seconds = Field(gt=0)


class RoundClosed(_Message):
    kind: Literal["round.closed"] = "round.closed"
    round: int = Field(ge=1, le=MAX_INT)
    version: int = Field(ge=1, le=MAX_INT, description="the model version this round committed")
    reason: Literal["quorum", "deadline"]
    contributors: list[ParticipantId]


class VersionProgress(_Message):
    """The open version's progress, for whoever watches (coordinator -> all): sent when a
    version opens, when an update is accepted, and at most every second otherwise."""

    kind: Literal["version.progress"] = "version.progress"
    mode: Literal["sync", "quorum", "async"]
    version: Count = Field(description="the current model; the open version is +1")
    round: int | None = Field(default=None, ge=1, le=MAX_INT)
    accepted: Count
    quorum: int = Field(ge=1, le=MAX_INT)
    refused: Count = Field(description="updates refused while this version is open")
    duplicates: Count = Field(
        default=0, description="copies of held or committed updates, acked and not applied"
    )
    seconds_left: Seconds
    rounds_total: int = Field(ge=1, le=MAX_INT)
    cannot_close: str | None = Field(
        default=None,
        max_length=1000,
        description="why the open version can never close with the participants alive "
        "(None: it can)",
    )


class FederationDone(_Message):
    kind: Literal["federation.done"] = "federation.done"
    rounds_completed: Count
    model_version: Count
    metrics: Metrics = Field(default_factory=dict)


class Join(_Message):
    kind: Literal["join"] = "join"
    participant: ParticipantId
    at: Seconds = Field(default_factory=time.time)


ParticipantState = Literal["idle", "training", "sending"]


class Heartbeat(_Message):
    kind: Literal["heartbeat"] = "heartbeat"
    participant: ParticipantId
    round: Count = 0
    #: What it is doing now, the model version it last trained on (-1: none yet), and
    #: what it has sent so far: for the people watching (the dashboard).
    state: ParticipantState = "idle"
    version: int = Field(ge=-1, le=MAX_INT, default=-1)
    updates_sent: Count = 0
    bytes_sent: Count = 0
    at: Seconds = Field(default_factory=time.time)


class Leave(_Message):
    kind: Literal["leave"] = "leave"
    participant: ParticipantId
    at: Seconds = Field(default_factory=time.time)


ControlMessage = Annotated[
    RoundOpen | RoundClosed | VersionProgress | FederationDone | Join | Heartbeat | Leave,
    Field(discriminator="kind"),
]
#: Validates any message of the control exchange into its kind's model.
CONTROL_MESSAGE: TypeAdapter[ControlMessage] = TypeAdapter(ControlMessage)

#: AMQP ``type`` property per message kind.
MESSAGE_TYPES: dict[str, str] = {
    "update": "fedq.update.v1",
    "model": "fedq.model.v1",
    "round.open": "fedq.round-open.v1",
    "round.closed": "fedq.round-closed.v1",
    "version.progress": "fedq.version-progress.v1",
    "federation.done": "fedq.federation-done.v1",
    "join": "fedq.join.v1",
    "heartbeat": "fedq.heartbeat.v1",
    "leave": "fedq.leave.v1",
}
