"""What an experiment makes of one participant, as settings: ``fedq participant``'s
``--slowdown``, ``--delay``, ``--dropout`` and ``--attack`` (flags, ``FEDQ_*`` variables
and ``--config`` keys made from the fields, see :mod:`fedq.options`), and per participant
what ``fedq simulate``'s scenario and flags say. :meth:`Emulation.emulate` wraps an app
in what is asked for, and in nothing when nothing is.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedq.experiments.attacks import FORMS, Poisoned, parse_attack
from fedq.experiments.dropout import DropsOut
from fedq.experiments.stragglers import Straggler
from fedq.participant.app import App
from fedq.participant.config import NOT_A_FLAG

Slowdown = Annotated[float, Field(ge=1.0, description="Times the real training time.")]
Dropout = Annotated[
    float, Field(ge=0.0, lt=1.0, description="Probability of skipping a given model.")
]
Delay = Annotated[float, Field(ge=0.0, description="Seconds added to each round trained.")]


class Emulation(BaseModel):
    """How one participant misbehaves; the defaults are an honest, punctual one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slowdown: Slowdown = Field(1.0, description="Take this many times longer (experiments).")
    delay_seconds: Delay = Field(
        0.0,
        description="Add this many seconds to each round (experiments).",
        json_schema_extra={"flag": "--delay"},
    )
    dropout: Dropout = Field(
        0.0,
        description="Skip each model with this probability, below 1 (experiments; the same "
        "models in every run).",
    )
    #: Keys the dropout draws (a scenario's seed), so a run can be reproduced.
    dropout_seed: int = Field(0, json_schema_extra=NOT_A_FLAG)
    attack: str | None = Field(
        None,
        description=f"Send poisoned updates (experiments): {FORMS}; with --count, every "
        "virtual participant does.",
    )

    @field_validator("attack")
    @classmethod
    def _known_attack(cls, value: str | None) -> str | None:
        if value is not None:
            parse_attack(value)
        return value

    def emulate(self, app: App, participant: str) -> App:
        """``app`` as participant ``participant`` runs it here: wrapped in a straggler,
        a dropout and an attack as these settings ask, or ``app`` itself."""
        if self.slowdown > 1 or self.delay_seconds > 0:
            app = Straggler(app, self.slowdown, self.delay_seconds)
        if self.dropout > 0:
            app = DropsOut(app, participant, self.dropout, self.dropout_seed)
        if self.attack is not None:
            app = Poisoned(app, parse_attack(self.attack))
        return app
