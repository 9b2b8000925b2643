"""The intake: every check an update goes through, in one place and in a fixed order.

decode -> schema -> federation -> identity -> size -> duplicate or conflict -> admission
(base version, staleness, round, one per participant: the mode's rule) -> tensor names,
shapes and dtypes -> finite values -> norm.

The verdict is a :class:`Candidate` to fold, a :class:`Duplicate` (the same bytes as an
update already held or committed: ack it, count it, never apply it twice) or a
:class:`Refused` with its reason for the dead-letter queue. A chunk of a large update
(:mod:`fedq.messages.chunks`) passes the same checks on its own slices and becomes a
:class:`ChunkCandidate` for the assembler (:mod:`.assembly`), which makes the update whole
and checks what only the whole can show (every value present once, the digest, the norm).
Cheap checks come first, and nothing here keeps a reference to the body beyond the
verdict. Pure apart from the two lookups it is given (held and committed digests); runs in
a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xxhash

from fedq.coordinator.strategies.base import l2_norm, sum_of_squares
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


@dataclass(frozen=True)
class Rejection(Exception):
    reason: str
    detail: str

    def header(self) -> str:
        """The ``x-fedq-reason`` header: the machine-readable reason, a colon, the text."""
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class Admitted:
    """A mode's yes: how far behind the update is, and the factor it is folded with."""

    staleness: int
    scale: float


#: A mode's admission rule for the open version: Admitted, or raise Rejection.
Admission = Callable[[UpdateMeta], Admitted]
#: update id -> digest of the body held or committed under it, or None.
DigestLookup = Callable[[str], str | None]


@dataclass(frozen=True)
class Candidate:
    meta: UpdateMeta
    #: Read-only views over the body: fold them before the body is released.
    deltas: dict[str, np.ndarray]
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


@dataclass(frozen=True)
class Duplicate:
    meta: UpdateMeta
    #: "held" (in the open version) or "committed" (in the ledger).
    of: str
    #: Which chunk it is a copy of (0 for an update in one message).
    chunk: int = 0


@dataclass(frozen=True)
class Refused:
    rejection: Rejection
    meta: UpdateMeta | None


Verdict = Candidate | ChunkCandidate | Duplicate | Refused


def body_digest(body: bytes | memoryview) -> str:
    """xxh3-128 of a body: tells a retried copy from other bytes under the same id. Not a
    security boundary (either way the copy is never applied), so speed wins: ~1 ms per
    40 MB against ~22 ms for SHA-256 here."""
    return xxhash.xxh3_128_hexdigest(body)


class Intake:
    def __init__(
        self,
        federation: str,
        spec: ModelSpec,
        committed_digest: DigestLookup,
        *,
        verify_identity: bool = False,
        max_bytes: int | None = None,
        max_norm: float | None = None,
        max_per_user: int | None = None,
    ) -> None:
        self.federation = federation
        self.spec = spec
        self.committed_digest = committed_digest
        self.verify_identity = verify_identity
        raw = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in spec.values())
        self.max_bytes = max_bytes or raw + METADATA_ALLOWANCE
        self.max_norm = max_norm
        #: With verified identities: distinct update ids one broker user may have admitted
        #: per version. Bounded by users x this (users are the broker's, not the sender's
        #: choice); cleared by :meth:`new_version`.
        self.max_per_user = max_per_user if verify_identity else None
        self._admitted_ids: dict[str, set[str]] = {}

    def new_version(self) -> None:
        """A version opened: every user's allowance starts again."""
        self._admitted_ids.clear()

    def _within_allowance(self, user: str, update_id: str) -> None:
        """Raise rate_limited if ``user`` already had ``max_per_user`` other updates
        admitted into the open version (a flood of well-formed updates from one user)."""
        if self.max_per_user is None:
            return
        ids = self._admitted_ids.setdefault(user, set())
        if update_id not in ids and len(ids) >= self.max_per_user:
            raise Rejection(
                "rate_limited",
                f"broker user {user!r} already has {len(ids)} updates in this version",
            )
        ids.add(update_id)

    def check(
        self, body: bytes, user_id: str | None, held_digest: DigestLookup, admit: Admission
    ) -> Verdict:
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
            chunk = decoded.chunk
            # A chunked update is known by the whole's digest, which every chunk carries.
            digest = body_digest(body) if chunk is None else chunk.digest
            for of, known in (("held", held_digest), ("committed", self.committed_digest)):
                seen = known(meta.update_id)
                if seen == digest:
                    return Duplicate(meta, of, 0 if chunk is None else chunk.index)
                if seen is not None:
                    raise Rejection(
                        "conflicting_duplicate",
                        f"update id {meta.update_id} is {of} with other contents",
                    )
            # For a chunk, an early no (stale, ahead): the assembler admits the whole again.
            admitted = admit(meta)
            if user_id is not None:
                self._within_allowance(user_id, meta.update_id)
            if chunk is not None:
                slices, squares = check_slices(decoded.tensors)
                return ChunkCandidate(meta, chunk, slices, squares, chunk_digest(decoded.tensors))
            deltas = check_tensors(decoded.tensors, self.spec, self.max_norm)
            return Candidate(meta, deltas, digest, admitted)
        except Rejection as rejection:
            return Refused(rejection, meta)


def check_slices(tensors: list[WireTensor]) -> tuple[list[TensorSlice], float]:
    """A chunk's slices and the sum of their squared values, or Rejection: finite values.
    ``tensors`` were decoded against the model's spec (names, shapes and dtypes checked
    before decoding); whether the chunks cover each value exactly once is the assembler's check,
    once it has them all."""
    slices: list[TensorSlice] = []
    squares = 0.0
    for t in tensors:
        assert t.slice is not None, "the decoder gives every tensor of a chunk its slice"
        square = sum_of_squares(t.array)
        if not np.isfinite(square):  # NaN or infinity among the values
            raise Rejection("non_finite", f"tensor {t.name!r} holds NaN or infinity")
        squares += square
        slices.append(TensorSlice(t.name, *t.slice))
    return slices, squares


def check_tensors(
    tensors: list[WireTensor], spec: ModelSpec, max_norm: float | None = None
) -> dict[str, np.ndarray]:
    """The update's deltas by name, or Rejection: every tensor of ``spec`` present, finite
    values, and (if ``max_norm`` is set) the L2 norm of the whole delta, a first guard
    against an update scaled up to drag the model (model replacement). ``tensors`` were
    decoded against ``spec``, which checked each one's shape and dtype before decoding."""
    names = [t.name for t in tensors]
    if set(names) != set(spec):
        missing = sorted(set(spec) - set(names))
        extra = sorted(set(names) - set(spec))
        raise Rejection("tensor_mismatch", f"missing {missing[:5]}, unexpected {extra[:5]}")
    for t in tensors:
        if not np.isfinite(t.array).all():
            raise Rejection("non_finite", f"tensor {t.name!r} holds NaN or infinity")
    deltas = {t.name: t.array for t in tensors}
    if max_norm is not None:
        norm = l2_norm(deltas)
        if norm > max_norm:
            raise Rejection("norm_exceeded", f"update L2 norm {norm:.4g} > bound {max_norm:.4g}")
    return deltas
