"""Typed messages: one pydantic model per message kind, validated at the boundary.

Every message carries ``v`` (the schema version) and ``federation``. Updates and models
also carry tensors, which are not part of these models: the codec appends them to the
same msgpack map (see :mod:`fedq.messages.codec`), so metadata can be validated before a
single tensor byte is looked at.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from fedq.messages.chunks import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES

SCHEMA_VERSION: Literal[1] = 1

FederationName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ParticipantId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = SCHEMA_VERSION
    federation: FederationName


class UpdateMeta(_Message):
    """A participant's weight delta, computed against model ``base_version``."""

    kind: Literal["update"] = "update"
    update_id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1, max_length=64)
    participant: ParticipantId
    #: The round it was trained for; None in async mode, which has no rounds.
    round: int | None = Field(default=None, ge=1)
    base_version: int = Field(ge=0, description="the model version the delta is against")
    num_examples: int = Field(gt=0, description="the FedAvg weight of this update")
    metrics: dict[str, float] = Field(default_factory=dict)
    train_seconds: float = Field(default=0.0, ge=0)


class ModelMeta(_Message):
    """A global model: version ``version``, which participants train on in round ``round``
    (None in async mode: train on it whenever free)."""

    kind: Literal["model"] = "model"
    version: int = Field(ge=0)
    round: int | None = Field(default=None, ge=1)
    rounds_total: int = Field(ge=1, description="versions the federation will commit")
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


class RoundOpen(_Message):
    kind: Literal["round.open"] = "round.open"
    round: int = Field(ge=1)
    version: int = Field(ge=0)
    quorum: int = Field(ge=1)
    deadline_seconds: float = Field(gt=0)


class RoundClosed(_Message):
    kind: Literal["round.closed"] = "round.closed"
    round: int = Field(ge=1)
    version: int = Field(ge=1, description="the model version this round committed")
    reason: Literal["quorum", "deadline"]
    contributors: list[str]


class VersionProgress(_Message):
    """The open version's progress, for whoever watches (coordinator -> all): sent when a
    version opens, when an update is accepted, and at most every second otherwise."""

    kind: Literal["version.progress"] = "version.progress"
    mode: Literal["sync", "quorum", "async"]
    version: int = Field(ge=0, description="the current model; the open version is +1")
    round: int | None = Field(default=None, ge=1)
    accepted: int = Field(ge=0)
    quorum: int = Field(ge=1)
    refused: int = Field(ge=0, description="updates refused while this version is open")
    duplicates: int = Field(
        default=0, ge=0, description="copies of held or committed updates, acked and not applied"
    )
    seconds_left: float
    rounds_total: int = Field(ge=1)


class FederationDone(_Message):
    kind: Literal["federation.done"] = "federation.done"
    rounds_completed: int = Field(ge=0)
    model_version: int = Field(ge=0)
    metrics: dict[str, float] = Field(default_factory=dict)


class Join(_Message):
    kind: Literal["join"] = "join"
    participant: ParticipantId
    at: float = Field(default_factory=time.time)


ParticipantState = Literal["idle", "training", "sending"]


class Heartbeat(_Message):
    kind: Literal["heartbeat"] = "heartbeat"
    participant: ParticipantId
    round: int = Field(ge=0, default=0)
    #: What it is doing now, the model version it last trained on (-1: none yet), and
    #: what it has sent so far: for the people watching (the dashboard).
    state: ParticipantState = "idle"
    version: int = Field(ge=-1, default=-1)
    updates_sent: int = Field(ge=0, default=0)
    bytes_sent: int = Field(ge=0, default=0)
    at: float = Field(default_factory=time.time)


class Leave(_Message):
    kind: Literal["leave"] = "leave"
    participant: ParticipantId
    at: float = Field(default_factory=time.time)


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
