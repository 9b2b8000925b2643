"""The open version: everything of the version being made, in one object.

A :class:`Version` is opened on model ``v`` and committed as ``v + 1``. It owns what
exists only while it is open, so that nothing of it outlives the commit or leaks into
the next version:

- the mode's window (:class:`~.modes.OpenVersion`): the updates folded so far and when it
  may close;
- the admission: the mode's rule, then each broker user's allowance of distinct updates;
- the held deliveries (:class:`~.held.HeldDeliveries`): unacked until the commit;
- the aggregation its updates are folded into;
- what was settled without being folded while it was open, by reason.

Nothing non-finite is ever committed: a fold that would overflow the aggregate, or an
update that alone would take the model past float32 (:mod:`.headroom`), is refused
(``overflow``) before it changes anything (:meth:`Version.fold`), and the aggregate and
the new model are checked again before the commit (:func:`check_finite`).

Chunked updates in assembly are not the version's: a stream may start under one version
and complete under the next, which admits it again (:meth:`Version.readmit`).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from fedq.coordinator.headroom import Headroom
from fedq.coordinator.held import HeldDeliveries
from fedq.coordinator.modes import CloseReason, Mode, OpenVersion
from fedq.coordinator.records import UpdateRecord
from fedq.coordinator.strategies import Aggregation
from fedq.coordinator.strategies.base import (
    DeltaPieces,
    EarlyFolds,
    FoldOverflow,
    Weights,
    WholeDelta,
    blocks,
)
from fedq.coordinator.update_cache import UpdateCache
from fedq.coordinator.verdicts import Admitted, Candidate, Rejection, Settled
from fedq.messages.schema import UpdateMeta
from fedq.messages.transport import Delivery


@dataclass(frozen=True)
class Update:
    """An admitted update, whole and checked: ready to be folded."""

    meta: UpdateMeta
    #: Its delta: views over one body, or a chunked update read back from the spool.
    pieces: DeltaPieces
    admitted: Admitted
    #: Of the body, or of a chunked update's whole: the ledger's, which a later copy of
    #: a committed update is compared against.
    digest: str
    #: The deliveries that brought it, by chunk index (0 for an update in one message).
    deliveries: dict[int, Delivery]
    #: Bytes on the wire, all chunks together.
    size: int
    #: By chunk index, what a later copy of each delivery is compared against while it is
    #: held (:func:`~.intake.chunk_copy_digest`; the body's digest for one message).
    copies: dict[int, str]

    @classmethod
    def of(cls, candidate: Candidate, delivery: Delivery) -> Update:
        """The update of one message."""
        return cls(
            candidate.meta,
            WholeDelta(candidate.deltas, math.sqrt(candidate.sum_squares)),
            candidate.admitted,
            candidate.digest,
            {0: delivery},
            len(delivery.body),
            {0: candidate.digest},
        )

    def record(self) -> UpdateRecord:
        """What the ledger keeps of it."""
        meta, admitted = self.meta, self.admitted
        return UpdateRecord(
            update_id=meta.update_id,
            participant=meta.participant,
            round=meta.round,
            base_version=meta.base_version,
            num_examples=meta.num_examples,
            weight=meta.num_examples * admitted.scale,
            staleness=admitted.staleness,
            digest=self.digest,
            metrics=dict(meta.metrics),
            size=self.size,
        )


class Allowance:
    """Distinct update ids each broker user may have admitted into one version: a user
    flooding well-formed updates is refused ``rate_limited`` past ``per_user``. Bounded
    by users x ``per_user`` (users are the broker's, not the sender's choice)."""

    def __init__(self, per_user: int | None) -> None:
        self.per_user = per_user
        self._ids: dict[str, set[str]] = {}

    def take(self, user: str, update_id: str) -> None:
        """Count ``update_id`` against ``user``'s allowance, or raise rate_limited."""
        if self.per_user is None:
            return
        ids = self._ids.setdefault(user, set())
        if update_id not in ids and len(ids) >= self.per_user:
            raise Rejection(
                "rate_limited",
                f"broker user {user!r} already has {len(ids)} updates in this version",
            )
        ids.add(update_id)


class Version:
    """The version being made on model :attr:`number` (an :class:`~.verdicts.Admission`
    for the intake)."""

    def __init__(
        self,
        window: OpenVersion,
        mode: Mode,
        aggregation: Aggregation,
        *,
        max_per_user: int | None = None,
        headroom: Headroom | None = None,
        cache: UpdateCache | None = None,
        early: bool = False,
    ) -> None:
        self.window = window
        #: ``--async-remedy cached``: each folded update is written there too.
        self.cache = cache
        #: The model it starts from, to refuse an update that would take it past float32
        #: (None: not checked).
        self.headroom = headroom
        self.mode = mode
        self.aggregation = aggregation
        #: Folds chunks of chunked updates as they come (when the aggregation can, and
        #: ``early``): see :mod:`~.strategies.early_mean`.
        self.early: EarlyFolds | None = aggregation.early_folds() if early else None
        self.allowance = Allowance(max_per_user)
        self.held = HeldDeliveries()
        #: Deliveries settled without being folded while it was open, by reason
        #: (``duplicate`` for copies): what the ledger records as refused during it.
        self.settled: Counter[str] = Counter()
        #: Why it can never close with the participants alive, as said (:mod:`.stall`).
        self.cannot_close: str | None = None

    @property
    def number(self) -> int:
        """The model it is made on; the commit makes ``number + 1``."""
        return self.window.version

    @property
    def records(self) -> list[UpdateRecord]:
        return self.window.records

    @property
    def refused(self) -> int:
        return self.settled.total() - self.duplicates

    @property
    def duplicates(self) -> int:
        return self.settled["duplicate"]

    # ------------------------------------------------------------ admission
    def held_digest(self, update_id: str, chunk: int) -> str | None:
        return self.held.copy_digest(update_id, chunk)

    def admit(self, meta: UpdateMeta, user: str | None) -> Admitted:
        """The mode's rule, then ``user``'s allowance; or raise Rejection."""
        admitted = self.mode.admit(self.window, meta)
        if user is not None:
            self.allowance.take(user, meta.update_id)
        return admitted

    def readmit(self, meta: UpdateMeta) -> Admitted:
        """A chunked update made whole: the version may have moved on while its chunks
        came. Its allowance was taken by its first chunk in this version, or it is a
        stream the previous version left (counted there)."""
        return self.mode.admit(self.window, meta)

    # ------------------------------------------------------------- contents
    async def fold(self, update: Update) -> UpdateRecord:
        """Fold ``update`` (in a worker thread) and hold its deliveries until the commit;
        or raise Rejection (``overflow``) with nothing folded or held: its weighted values
        would make the aggregate infinite (the sum of the others stands as it was), or,
        applied alone, take the model past float32 (:mod:`.headroom`)."""
        await asyncio.to_thread(self._fold, update)
        record = update.record()
        self.window.records.append(record)
        self.held.hold(update.meta.update_id, update.deliveries, update.copies)
        return record

    def _fold(self, update: Update) -> None:
        if self.headroom is not None and not self.headroom.fits(update.pieces):
            raise Rejection(
                "overflow", "applied alone it would take the model past float32 (3.4e38)"
            )
        meta, scale = update.meta, update.admitted.scale
        try:
            weight = float(meta.num_examples)
            early, chunks = self.early, len(update.deliveries)
            if early is None or not early.admit(
                meta.update_id, update.pieces, weight, scale, chunks
            ):
                self.aggregation.add_pieces(update.pieces, weight, scale)
        except (FoldOverflow, OverflowError) as exc:  # OverflowError: an int beyond float
            raise Rejection("overflow", f"folding it would overflow the aggregate: {exc}") from None
        if self.cache is not None:
            self.cache.stage(
                meta.participant, self.number + 1, meta.base_version, update.pieces, weight
            )

    def count(self, verdict: Settled) -> None:
        """A delivery settled without being folded while this version was open."""
        self.settled[verdict.reason] += 1

    def close_reason(self) -> CloseReason | None:
        return self.window.close_reason()

    def close(self) -> None:
        """Let go of the aggregation's buffers (and its spill file), committed or not."""
        self.aggregation.close()


class NonFiniteModel(RuntimeError):
    """The aggregate or the new model holds NaN or infinity: never committed."""


def check_finite(tensors: Weights, what: str) -> None:
    """Raise NonFiniteModel unless every value of ``tensors`` is finite (block by block:
    no model-sized temporary)."""
    for name, tensor in tensors.items():
        for _, block in blocks(tensor.reshape(-1)):
            if not np.isfinite(block).all():
                raise NonFiniteModel(
                    f"{what}: tensor {name!r} holds NaN or infinity; not committed (a server "
                    "step that overflows: bound updates with --max-update-norm)"
                )
