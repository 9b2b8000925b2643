"""The roster: who the federation's participants are, and how much data each declared.

Without a roster, any id a sender claims is a participant: the broker's permissions and
``--verify-identity`` say who may send as whom, and the weight of an update is the
``num_examples`` it claims, bounded only by ``--max-weight-share``. With one
(``--roster roster.toml``), an operator who knows the participants says so:

    [participants]
    hospital-a = { examples = 52000 }   # the data size it declared when it joined
    hospital-b = { examples = 8000 }
    lab-c = {}                          # no declared size: its claim is not bounded here

- an update under an id not listed is refused (``not_in_roster``), and so is a join,
  heartbeat or leave ignored: made-up ids are never remembered, counted or shown;
- an update's weight is at most its participant's declared ``examples``: a claim beyond it
  is counted as the declared size (the ledger records the weight counted).

What must stay true: the roster is read once, before the coordinator touches the broker,
and a file that cannot be used is one line (ConfigError) saying what is wrong.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedq.messages.schema import MAX_INT, ParticipantId, UpdateMeta


class RosterError(ValueError):
    """The roster file cannot be used; the message says why, in one line."""


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    examples: int | None = Field(None, gt=0, le=MAX_INT)


class _RosterFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    participants: dict[ParticipantId, _Entry] = Field(min_length=1)


@dataclass(frozen=True)
class Roster:
    #: participant id -> its declared number of examples, or None (not bounded).
    declared: dict[str, int | None]

    def __contains__(self, participant: object) -> bool:
        return participant in self.declared

    def __len__(self) -> int:
        return len(self.declared)

    def weighed(self, meta: UpdateMeta) -> UpdateMeta:
        """``meta`` with its weight at most what its participant declared. Its participant
        is on the roster (checked first)."""
        declared = self.declared[meta.participant]
        if declared is None or meta.num_examples <= declared:
            return meta
        return meta.model_copy(update={"num_examples": declared})


def load_roster(path: Path) -> Roster:
    """The roster in ``path``, or RosterError saying what is wrong with it."""
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text())
    except OSError as exc:
        raise RosterError(f"cannot read the roster {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RosterError(f"the roster {path} is not valid TOML: {exc}") from None
    try:
        parsed = _RosterFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RosterError(
            f"the roster {path}: {where}: {first['msg']} (expected [participants] with "
            "one `id = { examples = N }` or `id = {}` per participant)"
        ) from None
    return Roster({pid: entry.examples for pid, entry in parsed.participants.items()})
