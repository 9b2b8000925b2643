"""One quorum round: admission rules, the running mean, and when the round may close.

States: OPEN(r, v) collects valid updates -> closes at QUORUM (K valid) or at the DEADLINE
if at least ``min_quorum`` arrived (else the deadline extends). No I/O here: the round holds
the deliveries it incorporated so the coordinator can ack them after the commit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedq.coordinator.accumulator import WeightedMeanAccumulator
from fedq.coordinator.ledger import UpdateRecord
from fedq.coordinator.validation import Rejection
from fedq.messages.codec import Weights
from fedq.messages.schema import UpdateMeta
from fedq.messages.transport import Delivery

CloseReason = Literal["quorum", "deadline"]


@dataclass
class QuorumRound:
    number: int
    version: int
    model: Weights
    quorum: int
    min_quorum: int
    deadline_seconds: float
    opened_wall: float = field(default_factory=time.time)
    opened: float = field(default_factory=time.monotonic)
    extensions: int = 0
    #: update id -> every delivery of it held for the commit's ack (a redelivery after a
    #: reconnect, or a publisher's retry, brings the same id again: folded once, acked all).
    pending: dict[str, list[Delivery]] = field(default_factory=dict)
    records: list[UpdateRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert 1 <= self.min_quorum <= self.quorum, "need 1 <= min_quorum <= quorum"
        self.accumulator = WeightedMeanAccumulator(self.model)

    @property
    def contributors(self) -> list[str]:
        return [r.participant for r in self.records]

    def admit(self, meta: UpdateMeta) -> None:
        """Raise Rejection unless ``meta`` may join this round (staleness policy: reject)."""
        if meta.round < self.number or meta.base_version < self.version:
            raise Rejection(
                "stale",
                f"update for round {meta.round} (model v{meta.base_version}) arrived after "
                f"that round closed; model v{self.version} is current",
            )
        if meta.round > self.number or meta.base_version > self.version:
            raise Rejection(
                "unknown_round",
                f"update for round {meta.round} (model v{meta.base_version}) is ahead of "
                f"round {self.number} (model v{self.version})",
            )
        if meta.participant in self.contributors:
            raise Rejection(
                "already_submitted", f"{meta.participant} already has an update in this round"
            )

    def fold(self, meta: UpdateMeta, deltas: dict[str, np.ndarray], delivery: Delivery) -> None:
        """Add an admitted, validated update. Heavy numpy: call from a worker thread."""
        self.accumulator.add(deltas, float(meta.num_examples))
        self.pending[meta.update_id] = [delivery]
        self.records.append(
            UpdateRecord(
                update_id=meta.update_id,
                participant=meta.participant,
                round=meta.round,
                base_version=meta.base_version,
                num_examples=meta.num_examples,
                weight=float(meta.num_examples),
                staleness=self.version - meta.base_version,
                metrics=dict(meta.metrics),
            )
        )

    def seconds_left(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return self.opened + self.deadline_seconds * (1 + self.extensions) - now

    def close_reason(self, now: float | None = None) -> CloseReason | None:
        """Why the round may close now, or None. Extends an expired deadline below min quorum."""
        count = len(self.records)
        if count >= self.quorum:
            return "quorum"
        if self.seconds_left(now) <= 0:
            if count >= self.min_quorum:
                return "deadline"
            self.extensions += 1
        return None
