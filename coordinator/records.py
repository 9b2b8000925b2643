"""What a committed version is made of, as plain data: the ledger stores these, rounds and
observers pass them around. No I/O, no transport."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
class RejectionRecord:
    """One refused or duplicate delivery, as the ledger's ``rejections`` table keeps it.
    Its values come from a message that may have been refused for them: the ledger makes
    each storable (:meth:`~fedq.coordinator.ledger.UpdateLedger.record_rejections`)."""

    update_id: str | None
    participant: str | None
    round: int | None
    base_version: int | None
    #: The version open when it was settled.
    during_version: int
    reason: str
    detail: str


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
class VersionSummary:
    """A committed version as ``fedq history`` lists it and observers receive it at commit.

    One record for both, made only by :func:`summary_of` from what the ledger stores, so that
    what a watcher saw live is what the ledger says afterwards. Its fields are the rows of
    ``fedq history --json`` and of ``--report``'s history: renaming one changes those files.
    """

    version: int
    #: The round that made it (None in async mode).
    round: int | None
    closed_by: str
    n_updates: int
    #: Who sent its updates, in the order of ``updates`` (a name twice if it sent two).
    participants: list[str]
    #: Refusals by reason (duplicates included) recorded while it was the open version,
    #: that is while version - 1 was current.
    rejected: dict[str, int]
    seconds: float
    #: The app's held-out evaluation of the committed model.
    metrics: dict[str, float]
    #: Per update, in participant order: (participant, base version, staleness).
    updates: list[tuple[str, int, int]] = field(default_factory=list)
    epsilon: float | None = None
    #: Bytes of the version's updates on the wire, all together.
    update_bytes: int = 0
    #: The participants' own training metrics (loss, accuracy on their data), averaged over
    #: the version's updates weighted by examples.
    local_metrics: dict[str, float] = field(default_factory=dict)
    #: With federated evaluation (``--evaluate-local``): the lowest and highest
    #: ``local_accuracy`` among its updates, the spread non-IID data makes across
    #: participants (their example-weighted mean is in ``local_metrics``).
    local_accuracy_range: tuple[float, float] | None = None


def summary_of(
    version: VersionRecord,
    updates: Iterable[UpdateRecord],
    rejected_by_reason: Mapping[str, int],
) -> VersionSummary:
    """The summary of committed ``version`` made of ``updates`` and the refusals counted
    while it was open.

    The coordinator calls it at commit with what it commits, the ledger's read model with
    what it reads back; both must give equal records, so the result depends on nothing but
    what the ledger stores, in an order of its own: updates by participant, base version,
    update id (the ledger's order), reasons sorted. ``version.n_updates`` is not used: the
    count is that of ``updates``.
    """
    ordered = sorted(updates, key=lambda u: (u.participant, u.base_version, u.update_id))
    return VersionSummary(
        version=version.version,
        round=version.round,
        closed_by=version.closed_by,
        n_updates=len(ordered),
        participants=[u.participant for u in ordered],
        rejected=dict(sorted(rejected_by_reason.items())),
        seconds=version.committed_at - version.opened_at,
        metrics=dict(version.metrics),
        updates=[(u.participant, u.base_version, u.staleness) for u in ordered],
        epsilon=version.epsilon,
        update_bytes=sum(u.size for u in ordered),
        local_metrics=weighted_mean([(u.num_examples, u.metrics) for u in ordered]),
        local_accuracy_range=value_range(u.metrics.get("local_accuracy") for u in ordered),
    )


def value_range(values: Iterable[float | None]) -> tuple[float, float] | None:
    """(lowest, highest) of the values given, None if none is."""
    present = [float(v) for v in values if v is not None]
    return (min(present), max(present)) if present else None


def weighted_mean(samples: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Each metric averaged over the samples that report it, weighted by their examples."""
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for examples, metrics in samples:
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + examples * float(value)
            weights[key] = weights.get(key, 0) + examples
    return {k: sums[k] / weights[k] for k in sorted(sums) if weights[k] > 0}
