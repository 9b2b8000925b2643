"""What a committed version is made of, as plain data: the ledger stores these, rounds and
observers pass them around. No I/O, no transport."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class UpdateRecord:
    """One update folded into a version."""

    update_id: str
    participant: str
    #: The round it was trained for (None in async mode, which has no rounds).
    round: int | None
    base_version: int
    num_examples: int
    #: The weight it was folded with: num_examples x staleness factor.
    weight: float
    #: tau = the version it was folded against - base_version.
    staleness: int = 0
    #: xxh3-128 of the message body: tells a retried copy from another body with its id.
    digest: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    #: Bytes of the message body on the wire (what the update's codec made of it).
    size: int = 0


@dataclass(frozen=True)
class VersionRecord:
    version: int
    #: The round that made it (None in async mode).
    round: int | None
    closed_by: str
    total_weight: float
    opened_at: float
    committed_at: float
    checkpoint: str
    metrics: dict[str, float] = field(default_factory=dict)
    n_updates: int = 0
    #: Differential privacy spent up to and including this version (None: DP off).
    epsilon: float | None = None


@dataclass(frozen=True)
class RoundHistory:
    """One row of ``fedq history``: a committed version."""

    version: int
    round: int | None
    closed_by: str
    n_updates: int
    participants: list[str]
    rejected: dict[str, int]
    seconds: float
    metrics: dict[str, float]
    #: Per update, in participant order: (participant, base version, staleness).
    updates: list[tuple[str, int, int]] = field(default_factory=list)
    epsilon: float | None = None
    #: Bytes of the version's updates on the wire, all together.
    update_bytes: int = 0
    #: The participants' own training metrics (loss, accuracy on their data), averaged over
    #: the version's updates weighted by examples.
    local_metrics: dict[str, float] = field(default_factory=dict)
