"""The intake: every check an update goes through, in one place and in a fixed order.

size (before anything is decoded) -> decode (tensor names, shapes and dtypes against the
model, before the data is looked at) -> schema -> federation -> identity -> roster (and the
weight it allows, ``--roster``) -> duplicate or conflict -> admission (the version's: base
version, staleness, round and one per participant by the mode's rule, then the sender's
allowance, ``rate_limited``) -> every tensor present -> finite values -> norm.

The verdict is a :class:`Candidate` to fold, a :class:`Duplicate` (the same bytes as an
update already held or committed: ack it, count it, never apply it twice) or a
:class:`Refused` with its reason for the dead-letter queue. A chunk of a large update
(:mod:`fedq.messages.chunks`) passes the same checks on its own slices and becomes a
:class:`ChunkCandidate` for the assembler (:mod:`.assembly`), which makes the update whole
and checks what only the whole can show (every value present once, the digest, the norm).
Cheap checks come first, and nothing here keeps a reference to the body beyond the
verdict. Pure apart from what it is given (the committed digests, and the version it
admits into: :class:`~.verdicts.Admission`); runs in a worker thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import xxhash

from fedq.coordinator.roster import Roster
from fedq.coordinator.strategies.base import sum_of_squares
from fedq.coordinator.verdicts import (
    Admission,
    Candidate,
    ChunkCandidate,
    Duplicate,
    Refused,
    Rejection,
    Verdict,
)
from fedq.messages.chunks import TensorSlice, chunk_digest
from fedq.messages.codec import (
    ChunkInfo,
    MalformedMessage,
    ModelSpec,
    WireTensor,
    decode_message,
)
from fedq.messages.schema import UpdateMeta

#: Bytes a body may carry beyond its raw tensors (metadata, msgpack headers) by default.
METADATA_ALLOWANCE = 1 << 20

#: update id -> digest of the body committed under it, or None.
DigestLookup = Callable[[str], str | None]


def body_digest(body: bytes | memoryview) -> str:
    """xxh3-128 of a body: tells a retried copy from other bytes under the same id. Not a
    security boundary (either way the copy is never applied), so speed wins: xxh3 runs
    near memory bandwidth, many times faster than a cryptographic hash."""
    return xxhash.xxh3_128_hexdigest(body)


def chunk_copy_digest(meta: UpdateMeta, chunk: ChunkInfo, own: bytes) -> str:
    """What a copy of a held chunk must match: its update's metadata, its place and the
    digest it carries, and its own digest (``own``, :func:`~fedq.messages.chunks.
    chunk_digest`, computed here, not claimed). The digest a chunk carries is only a claim:
    a copy carrying it over other values, held in place of the honest chunk, would be all
    the broker has of it after a crash."""
    fields = meta.model_dump_json().encode()
    place = f"{chunk.index}/{chunk.count}/{chunk.digest}".encode()
    return xxhash.xxh3_128_hexdigest(b"\0".join((fields, place, own)))


class Intake:
    """The checks of one federation's updates against its model. Holds no state of a
    version: what was admitted so far is the version's (:class:`~.verdicts.Admission`)."""

    def __init__(
        self,
        federation: str,
        spec: ModelSpec,
        committed_digest: DigestLookup,
        *,
        verify_identity: bool = False,
        max_bytes: int | None = None,
        max_norm: float | None = None,
        roster: Roster | None = None,
    ) -> None:
        self.federation = federation
        self.spec = spec
        self.committed_digest = committed_digest
        self.verify_identity = verify_identity
        raw = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in spec.values())
        self.max_bytes = max_bytes or raw + METADATA_ALLOWANCE
        self.max_norm = max_norm
        self.roster = roster

    def check(self, body: bytes, user_id: str | None, into: Admission) -> Verdict:
        """The verdict on ``body``, sent by broker user ``user_id``, for version ``into``."""
        meta: UpdateMeta | None = None
        try:
            # First, before anything is decoded: decoding costs memory in proportion to
            # what the body declares (a metadata map of a million entries ...).
            if len(body) > self.max_bytes:
                raise Rejection(
                    "too_large", f"body of {len(body)} bytes > limit of {self.max_bytes}"
                )
            try:
                decoded = decode_message(body, self.spec)
                meta = decoded.meta(UpdateMeta)
            except MalformedMessage as exc:
                raise Rejection(exc.reason, exc.detail) from None
            if meta.federation != self.federation:
                raise Rejection("wrong_federation", f"update is for {meta.federation!r}")
            if self.verify_identity and user_id != meta.participant:
                raise Rejection(
                    "forged",
                    f"claims participant {meta.participant!r}, sent by broker user {user_id!r}",
                )
            if self.roster is not None:
                if meta.participant not in self.roster:
                    raise Rejection("not_in_roster", f"{meta.participant!r} is not on the roster")
                meta = self.roster.weighed(meta)
            chunk = decoded.chunk
            index = 0 if chunk is None else chunk.index
            digest = body_digest(body) if chunk is None else chunk.digest
            held = into.held_digest(meta.update_id, index)
            if held is not None:  # its copy must be the same, checked: it may be held instead
                if chunk is not None:
                    digest = chunk_copy_digest(meta, chunk, chunk_digest(decoded.tensors))
                self._duplicate(meta, "held", held, digest)
                return Duplicate(meta, "held", index)
            # A committed copy is only acked, never held: the digest it claims is enough.
            # The ledger keeps the whole's, which only the last chunk carries, so a copy of
            # another chunk is taken as a duplicate (never applied, whatever it carries).
            committed = self.committed_digest(meta.update_id)
            if committed is not None:
                if chunk is None or chunk.index == chunk.count - 1:
                    self._duplicate(meta, "committed", committed, digest)
                return Duplicate(meta, "committed", index)
            # For a chunk, an early no (stale, ahead): the version admits the whole again.
            admitted = into.admit(meta, user_id)
            if chunk is not None:
                slices, squares = check_slices(decoded.tensors)
                return ChunkCandidate(
                    meta, chunk, slices, squares, chunk_digest(decoded.tensors), admitted
                )
            deltas, squares = check_tensors(decoded.tensors, self.spec, self.max_norm)
            return Candidate(meta, deltas, squares, digest, admitted)
        except Rejection as rejection:
            return Refused(rejection, meta)

    @staticmethod
    def _duplicate(meta: UpdateMeta, of: str, known: str, digest: str) -> None:
        """Rejection unless ``digest`` is that of the copy ``of`` kept under its id."""
        if known != digest:
            raise Rejection(
                "conflicting_duplicate", f"update id {meta.update_id} is {of} with other contents"
            )


def check_slices(tensors: list[WireTensor]) -> tuple[list[TensorSlice], float]:
    """A chunk's slices and the sum of their squared values, or Rejection: finite values.
    ``tensors`` were decoded against the model's spec (names, shapes and dtypes checked
    before decoding); whether the chunks cover each value exactly once is the assembler's check,
    once it has them all."""
    slices: list[TensorSlice] = []
    for t in tensors:
        assert t.slice is not None, "the decoder gives every tensor of a chunk its slice"
        slices.append(TensorSlice(t.name, *t.slice))
    return slices, finite_squares(tensors)


def finite_squares(tensors: list[WireTensor]) -> float:
    """The sum of the squared values of ``tensors`` (float64), or Rejection: a value is NaN
    or infinite. One pass gives both: the sum is finite exactly when every value is."""
    squares = 0.0
    for t in tensors:
        square = sum_of_squares(t.array)
        if not np.isfinite(square):
            raise Rejection("non_finite", f"tensor {t.name!r} holds NaN or infinity")
        squares += square
    return squares


def check_tensors(
    tensors: list[WireTensor], spec: ModelSpec, max_norm: float | None = None
) -> tuple[dict[str, np.ndarray], float]:
    """The update's deltas by name and the sum of their squared values, or Rejection:
    every tensor of ``spec`` present, finite values, and (if ``max_norm`` is set) the L2
    norm of the whole delta, a first guard against an update scaled up to drag the model
    (model replacement). ``tensors`` were decoded against ``spec``, which checked each
    one's shape and dtype before decoding. One pass over the values gives all three
    (:func:`finite_squares`, as for a chunk), and the fold takes the norm from it
    (:class:`~.strategies.base.WholeDelta`) instead of a pass of its own."""
    names = [t.name for t in tensors]
    if set(names) != set(spec):
        missing = sorted(set(spec) - set(names))
        extra = sorted(set(names) - set(spec))
        raise Rejection("tensor_mismatch", f"missing {missing[:5]}, unexpected {extra[:5]}")
    squares = finite_squares(tensors)
    if max_norm is not None and (norm := math.sqrt(squares)) > max_norm:
        raise Rejection("norm_exceeded", f"update L2 norm {norm:.4g} > bound {max_norm:.4g}")
    return {t.name: t.array for t in tensors}, squares
