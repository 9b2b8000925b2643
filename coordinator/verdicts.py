"""What the intake says of a delivery, and what it asks of the version it admits into.

Plain types shared by :mod:`.intake` (which makes verdicts), :mod:`.modes` (whose rules
raise :class:`Rejection`), :mod:`.version` (which admits and folds) and :mod:`.settle`
(which settles what is not folded), so that none of those imports another in a cycle.

A verdict is one of:

- :class:`Candidate`: an update in one message that passed every check: fold it;
- :class:`ChunkCandidate`: one chunk of a large update that passed its own checks: the
  assembler (:mod:`.assembly`) makes the update whole;
- :class:`Duplicate`: the same bytes as an update already held or committed: ack it,
  count it, never apply it twice;
- :class:`Refused`: its reason goes with it to the dead-letter queue.

The last two are *settled* (:data:`Settled`): taken off the coordinator's hands at once.
Both say what the ledger records of them (:meth:`Duplicate.outcome`,
:meth:`Refused.outcome`) and whether the body goes to the dead-letter queue, so whoever
settles them needs no ``isinstance``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedq.messages.chunks import TensorSlice
from fedq.messages.codec import ChunkInfo
from fedq.messages.schema import UpdateMeta
from fedq.runtime.printable import printable


@dataclass(frozen=True)
class Rejection(Exception):
    """Why an update is refused: ``reason`` is machine-readable (a metric label, a ledger
    column), ``detail`` is for a person."""

    reason: str
    detail: str

    def header(self) -> str:
        """The ``x-fedq-reason`` header: the machine-readable reason, a colon, the text."""
        return Outcome(None, self.reason, self.detail).header()

    def bare(self) -> Rejection:
        """The same reason and detail, raised nowhere. Kept past the ``except`` that caught
        it (in a verdict settled beside the collection, in the assembler's memory of
        refused ids), a rejection as raised holds its traceback and the exceptions it was
        raised from: every frame they passed through with its locals (the body among them),
        in a cycle through the worker thread's frame that only the garbage collector
        breaks, however late. A flood of large refused bodies piled up so."""
        return Rejection(self.reason, self.detail)


@dataclass(frozen=True)
class Admitted:
    """A mode's yes: how far behind the update is, and the factor it is folded with."""

    staleness: int
    scale: float


class Admission(Protocol):
    """What the intake asks of the version it admits into (:class:`.version.Version`, or
    the refusal of everything once the federation is done)."""

    def held_digest(self, update_id: str, chunk: int) -> str | None:
        """What a copy of chunk ``chunk`` (0 for an update in one message) of the update
        held under ``update_id`` must match, or None when no update is held under it."""

    def admit(self, meta: UpdateMeta, user: str | None) -> Admitted:
        """Admit ``meta``, sent by broker user ``user``, or raise :class:`Rejection`."""


@dataclass(frozen=True)
class Candidate:
    meta: UpdateMeta
    #: Read-only views over the body: fold them before the body is released.
    deltas: dict[str, np.ndarray]
    #: Sum of the squares of its values (float64), for its norm.
    sum_squares: float
    digest: str
    admitted: Admitted


@dataclass(frozen=True)
class ChunkCandidate:
    """One chunk whose own checks passed; the update it belongs to is not whole yet."""

    meta: UpdateMeta
    chunk: ChunkInfo
    slices: list[TensorSlice]
    #: Sum of the squares of its values (float64), for the whole update's norm.
    sum_squares: float
    #: Its own digest (:func:`fedq.messages.chunks.chunk_digest`).
    digest: bytes
    #: The version's admission of its update as of this chunk (the whole is admitted
    #: again when complete: :meth:`~.version.Version.readmit`).
    admitted: Admitted


@dataclass(frozen=True)
class Outcome:
    """What the ledger and the observers record of a settled delivery."""

    meta: UpdateMeta | None
    reason: str
    #: For a person; made printable and bounded here (:func:`~fedq.runtime.printable.printable`):
    #: it quotes what the sender wrote (a key of its metadata, a message id), and goes
    #: into a header, the ledger and log lines.
    detail: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", printable(self.detail))

    def header(self) -> str:
        """The ``x-fedq-reason`` header of its dead-letter copy."""
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class Duplicate:
    meta: UpdateMeta
    #: "held" (in the open version), "committed" (in the ledger) or "in assembly".
    of: str
    #: Which chunk it is a copy of (0 for an update in one message).
    chunk: int = 0

    #: A copy changes nothing: acked and counted, its body not kept anywhere.
    dead_letter = False

    @property
    def reason(self) -> str:
        return "duplicate"

    def outcome(self) -> Outcome:
        detail = f"the same bytes as update {self.meta.update_id}, already {self.of}"
        if self.chunk:
            detail = f"chunk {self.chunk}: {detail}"
        return Outcome(self.meta, self.reason, detail)


@dataclass(frozen=True)
class Refused:
    rejection: Rejection
    meta: UpdateMeta | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rejection", self.rejection.bare())  # see Rejection.bare

    #: A refusal is evidence: its body goes to the dead-letter queue with the reason.
    dead_letter = True

    @property
    def reason(self) -> str:
        return self.rejection.reason

    def outcome(self) -> Outcome:
        return Outcome(self.meta, self.reason, self.rejection.detail)


Settled = Duplicate | Refused
Verdict = Candidate | ChunkCandidate | Settled
