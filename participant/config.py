"""A participant's settings: pydantic models, the single place its options are declared.

Each field's ``description`` is its ``--help`` text. ``fedq participant`` makes of every
field not marked ``cli: False`` a flag (``--field-name``, or the ``flag`` in its extra),
an environment variable (``FEDQ_FIELD_NAME``, or the ``env`` in its extra) and a key of
its ``--config`` file (:mod:`fedq.options`). How it trains is
:class:`~fedq.participant.app.TrainConfig` and how the data is split :class:`DataSplit`,
both shared with ``fedq simulate``. Adding an option is one field here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedq.messages.codecs import CODECS, LOSSLESS, CodecError, get_codec
from fedq.participant.app import Partition, TrainConfig
from fedq.participant.scheme import DESCRIBED, Scheme

#: The metadata of a field that is a setting but no flag (the code or a command sets it).
NOT_A_FLAG: dict[str, Any] = {"cli": False}

CODEC_HELP = (
    f"Tensor codec of the updates sent: {', '.join(CODECS)} or topk:FRACTION (topk sends "
    f"the largest entries, 1% unless FRACTION says); lossy codecs "
    f"({', '.join(c for c in CODECS if c not in LOSSLESS)}) carry error feedback across rounds."
)


def check_codec(name: str) -> str:
    """``name`` if it names an update codec, else ValueError listing them."""
    try:
        get_codec(name)
    except CodecError:
        raise ValueError(
            f"unknown codec {name!r}: choose one of {', '.join(CODECS)} or topk:FRACTION"
        ) from None
    return name


class ParticipantConfig(BaseModel):
    """One participant: who it is, which share of the data it holds, what it sends."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    federation: str = Field(description="Federation name.")
    participant_id: str = Field(
        description="This participant's id.", json_schema_extra={"flag": "--id"}
    )
    #: Its scheme comes from :class:`DataSplit` (``--partition-scheme``): the env name
    #: FEDQ_PARTITION is that one's, as it always was.
    partition: Partition = Field(
        default_factory=Partition,
        description="Data share INDEX/COUNT (0-based), e.g. 2/4.",
        json_schema_extra={"env": "FEDQ_PARTITION_SHARE"},
    )
    update_codec: str = Field("raw", description=CODEC_HELP, json_schema_extra={"flag": "--codec"})
    sent_log: Path | None = Field(
        None,
        description="Append a JSON line per update the broker confirmed (for fedq audit "
        "--sent-log).",
    )
    verify_coordinator: bool = Field(
        False,
        description="Take models and federation.done only from the coordinator's broker "
        "user (--coordinator-user); anything else is acked and ignored (needs one broker "
        "user per role, as `fedq deploy users` renders).",
    )
    coordinator_user: str = Field(
        "coordinator",
        description="With --verify-coordinator, the coordinator's broker user (the name "
        "`fedq deploy users` gives it).",
    )
    #: None: the app's ``train_config`` (or fedq's defaults).
    train: TrainConfig | None = Field(None, json_schema_extra=NOT_A_FLAG)
    heartbeat_seconds: float = Field(5.0, gt=0, json_schema_extra=NOT_A_FLAG)
    #: Stop consuming its queue while training, so that it holds no delivery however long
    #: training takes (RabbitMQ's consumer_timeout). Many participants in one process
    #: (``--count``, simulations: :func:`fedq.simulation.run_participants`) keep consuming
    #: instead: leaving and coming back each round measured 616 MB against 160 MB for the
    #: process of 1,000 virtual participants (bench/scale.py), and their training is
    #: short. They hold their model until its update is sent, as the queue keeps only
    #: the newest: what they train on next is never a superseded one.
    release_queue_while_training: bool = Field(True, json_schema_extra=NOT_A_FLAG)
    #: A model part-way assembled whose next chunk has not come for this long is asked for
    #: again (a join; then twice as long, up to MAX_REJOIN_FACTOR times). Its first chunks
    #: were lost to this participant when its queue was bound in the middle of the
    #: model's fanout, and the coordinator answers no join while a queue holds chunks.
    stalled_model_seconds: float = Field(10.0, gt=0, json_schema_extra=NOT_A_FLAG)

    @field_validator("partition", mode="before")
    @classmethod
    def _share(cls, value: Any) -> Any:
        return Partition.parse(value) if isinstance(value, str) else value

    @field_validator("update_codec")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        return check_codec(value)


class DataSplit(BaseModel):
    """How the shipped apps split the data among participants; ``fedq simulate`` and
    ``fedq participant`` share it. It reaches the app in each participant's
    :class:`~fedq.participant.app.Partition`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    partition_scheme: Scheme = Field(
        default_factory=Scheme,
        description=f"How the shipped apps split the data: {DESCRIBED}.",
        json_schema_extra={"env": "FEDQ_PARTITION"},
    )

    @field_validator("partition_scheme", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        return Scheme.parse(value) if isinstance(value, str) else value
