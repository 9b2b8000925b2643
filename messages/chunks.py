"""Chunks: a model or update too large for one AMQP message travels as several.

RabbitMQ refuses a message above ``max_message_size`` (128 MiB by default), and a whole
500 MB body would have to sit in memory at both ends. So a message whose tensors take more
than ``chunk_bytes`` (default 4 MiB) is cut into chunks of at most that many raw tensor
bytes. Each chunk is a complete fedq body (:mod:`fedq.messages.codec`): the same metadata,
``chunk = {index, count, digest}``, and slices ``[start, stop)`` of the flattened tensors.

How tensors are cut: tensors are laid end to end in model order and cut every
``chunk_bytes``; a tensor that spans a cut becomes one slice per chunk it touches, and small
tensors share a chunk. Cuts fall on multiples of :data:`SLICE_ALIGN` values, so ``int8``'s
scale blocks never straddle two chunks and its chunks decode exactly as the whole tensor
would. ``topk`` keeps the top fraction per slice: the participant's error feedback computes
what it sends with the same plan (:func:`plan_chunks`), so nothing is lost either way.

The digest: each chunk's own is xxh3-128 over its slices' names, codecs, bounds and
encoded payloads. The ``digest`` a chunk carries is that of the chunks up to it: chunk i
carries xxh3-128 over the own digests of chunks 0 to i in index order
(:func:`carried_digests`), so the last one carries the whole's. A sender makes each
chunk's body and hashes its slices from it: one pass over the tensors, each chunk encoded
once, not a pass to hash (and encode) the whole before the first chunk can go. A receiver
keeps a :class:`ChunkChain` of each message in assembly: it computes each chunk's own
digest as it arrives; a chunk whose earlier chunks are all in must carry their chain
(:meth:`ChunkChain.follows`), so a chunk of another message under the same id is refused
on its own when chunks come in order, and once it has them all every carried digest must
match (:meth:`ChunkChain.matches`): a chunk replaced by other bytes, or chunks of two
different messages under one id, never pass. It tells copies
apart; it is no signature.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import xxhash
from pydantic import BaseModel

from fedq.messages.codec import (
    ChunkInfo,
    EncodedTensor,
    PackedFields,
    WireTensor,
    encode_body,
    encode_message,
    lay_out_body,
)
from fedq.messages.codecs import TensorCodec, get_codec
from fedq.messages.unfilled import FILLS_BYTES, writable_view

#: The default most raw tensor bytes per chunk (the coordinator's ``chunk_bytes``, which
#: its models announce and participants follow): small, because each body in flight costs
#: several transient copies in the AMQP client (frames, the socket buffer), and it must stay
#: below the 8 MiB malloc threshold of :mod:`fedq.runtime.allocator`, so that bodies come
#: from the heap (bench/README.md, "Chunk size and malloc thresholds").
DEFAULT_CHUNK_BYTES = 4 << 20
#: The chunk sizes a coordinator may use and a model may announce. At most: a chunk's body
#: (its tensor bytes plus metadata) stays under RabbitMQ's default 128 MiB message limit.
#: At least: every body repeats the metadata, and a participant, which declares its model
#: queue before it knows the size, can count on a model of at most this many bytes coming
#: in one message.
MIN_CHUNK_BYTES = 64 << 10
MAX_CHUNK_BYTES = 120 << 20
#: Cuts fall on multiples of this many values (``int8``'s block).
SLICE_ALIGN = 4096
#: The most bytes a tensor's (or slice's) map takes in a body besides its name, its data
#: and 9 bytes per dimension: the keys, dtype, codec, slice, alignment pad and headers.
TENSOR_HEAD_BYTES = 128
#: The most bytes a body takes besides its metadata fields and its tensors: the map and
#: array headers and a chunk's index, count and digest.
BODY_HEAD_BYTES = 128


@dataclass(frozen=True, slots=True)
class TensorSlice:
    name: str
    start: int
    stop: int


Plan = list[list[TensorSlice]]


def plan_chunks(tensors: Mapping[str, np.ndarray], chunk_bytes: int) -> Plan:
    """The slices of each chunk; one chunk of whole tensors when they fit ``chunk_bytes``.

    Deterministic in the tensors' names, sizes and dtypes, so sender and error feedback
    agree. Each chunk holds at most ``chunk_bytes`` raw bytes, or one aligned block of a
    tensor whose values are so large that a block exceeds it."""
    total = sum(t.nbytes for t in tensors.values())
    if total <= chunk_bytes:
        return [[TensorSlice(name, 0, t.size) for name, t in tensors.items() if t.size]]
    plan: Plan = [[]]
    room = chunk_bytes
    for name, tensor in tensors.items():
        start, size, itemsize = 0, tensor.size, tensor.dtype.itemsize
        while start < size:
            fits = room // itemsize
            if start + fits < size:
                fits = fits // SLICE_ALIGN * SLICE_ALIGN  # a cut inside: aligned
            if fits <= 0:
                if plan[-1]:
                    plan.append([])
                    room = chunk_bytes
                    continue
                fits = SLICE_ALIGN  # a block larger than a chunk: one block per chunk
            stop = min(size, start + fits)
            plan[-1].append(TensorSlice(name, start, stop))
            room -= (stop - start) * itemsize
            start = stop
    return [chunk for chunk in plan if chunk]


def _slice_digest_into(
    hasher: xxhash.xxh3_128, name: str, codec: str, start: int, stop: int, payload: memoryview
) -> None:
    hasher.update(name.encode())
    hasher.update(b"\0" + codec.encode() + b"\0")
    hasher.update(struct.pack("<QQ", start, stop))
    hasher.update(payload)


def chunk_digest(slices: Iterable[WireTensor] | Iterable[EncodedTensor]) -> bytes:
    """xxh3-128 of one chunk's slices (16 bytes)."""
    hasher = xxhash.xxh3_128()
    for t in slices:
        assert t.slice is not None, "a chunk carries slices"
        _slice_digest_into(hasher, t.name, t.codec, t.slice[0], t.slice[1], t.payload)
    return hasher.digest()


def carried_digests(chunk_digests: Iterable[bytes]) -> Iterator[str]:
    """The digest each chunk carries, in order: chunk i's is xxh3-128 (hex) of the own
    digests of chunks 0 to i joined (the last one's is the whole's)."""
    hasher = xxhash.xxh3_128()
    for digest in chunk_digests:
        hasher.update(digest)
        yield hasher.hexdigest()


@dataclass
class ChunkChain:
    """One chunked message's digests as its chunks come in, by index: each chunk's own
    digest (the receiver computes it) and the digest it carries. Both receivers, the
    coordinator's update assembly and a participant's model assembly, check a chunk
    against it. Holds only what :meth:`add` was given: 16 bytes and a hex string a chunk."""

    count: int
    own: dict[int, bytes] = field(default_factory=dict)
    carried: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.own)

    def __contains__(self, index: object) -> bool:
        return index in self.own

    @property
    def whole(self) -> bool:
        return len(self.own) == self.count

    @property
    def digest(self) -> str:
        """The whole's: what the last chunk carries (in the chain once it came)."""
        return self.carried[self.count - 1]

    def same(self, index: int, own: bytes, carried: str) -> bool:
        """Whether a chunk is a copy of chunk ``index``, which is in: the same bytes and the
        same digest carried."""
        return (self.own[index], self.carried[index]) == (own, carried)

    def follows(self, index: int, own: bytes, carried: str) -> bool:
        """Whether a chunk whose own digest is ``own`` and that carries ``carried`` can be
        chunk ``index``: False only when every chunk before it is in and ``carried`` is not
        their chain with ``own``; after a gap it is checked once the message is whole
        (:meth:`matches`)."""
        if any(i not in self.own for i in range(index)):
            return True
        *_, chain = carried_digests([*(self.own[i] for i in range(index)), own])
        return chain == carried

    def add(self, index: int, own: bytes, carried: str) -> None:
        assert 0 <= index < self.count and index not in self.own, "a new chunk of the message"
        self.own[index] = own
        self.carried[index] = carried

    def matches(self) -> bool:
        """Whether the message is whole and every chunk carries the digest of its chunks up
        to it."""
        if not self.whole:
            return False
        order = range(self.count)
        return list(carried_digests(self.own[i] for i in order)) == [self.carried[i] for i in order]


def _encode_chunk(
    tensors: Mapping[str, np.ndarray], slices: list[TensorSlice], codec: str | TensorCodec
) -> list[EncodedTensor]:
    tensor_codec = get_codec(codec)
    out = []
    for part in slices:
        tensor = tensors[part.name]
        values = tensor.reshape(-1)[part.start : part.stop]
        out.append(
            EncodedTensor(
                part.name,
                tensor.dtype,
                tensor.shape,
                tensor_codec.name,
                (part.start, part.stop),
                tensor_codec.encode(values),
            )
        )
    return out


#: The carried digest a chunk's body is laid out with, before its own digest is known: as
#: long as every digest (xxh3-128 in hex).
_DIGEST_UNSET = "0" * 32


def _chunk_body(
    fields: PackedFields,
    encoded: list[EncodedTensor],
    chunk: ChunkInfo,
    chain: xxhash.xxh3_128,
) -> bytes:
    """The body of ``chunk`` (whose digest is unset), with ``chain`` moved past its slices.

    Where a bytes object can be filled in after it is made (:data:`FILLS_BYTES`), the body
    is joined first and each payload hashed from it, still in the cache, and the digest is
    then written in its place: hashing the payloads from the tensors instead reads them from
    memory a second time (bench/README.md, "Where a round's time goes", 2026-12-07, an AMD
    EPYC)."""
    if not FILLS_BYTES:
        chain.update(chunk_digest(encoded))
        return encode_body(fields, encoded, replace(chunk, digest=chain.hexdigest()))
    layout = lay_out_body(fields, encoded, chunk)
    assert layout.chunk_end is not None
    body = b"".join(layout.parts)  # new: the only reference is this function's
    view = memoryview(body)
    hasher = xxhash.xxh3_128()
    for tensor, at in zip(encoded, layout.payloads, strict=True):
        assert tensor.slice is not None, "a chunk carries slices"
        start, stop = tensor.slice
        payload = view[at : at + tensor.payload.nbytes]
        _slice_digest_into(hasher, tensor.name, tensor.codec, start, stop, payload)
    chain.update(hasher.digest())
    digest = np.frombuffer(chain.hexdigest().encode(), dtype=np.uint8)
    writable_view(body)[layout.chunk_end - len(digest) : layout.chunk_end] = digest
    return body


def encode_chunks(
    meta: BaseModel,
    tensors: Mapping[str, np.ndarray],
    codec: str | TensorCodec = "raw",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    read: Callable[[], None] | None = None,
) -> Iterator[bytes]:
    """The bodies that carry ``meta`` and ``tensors``, one at a time: one plain message
    (:func:`~fedq.messages.codec.encode_message`) when it fits, else its chunks.

    Only one chunk's body exists at a time, and each chunk is encoded once: the digest a
    chunk carries needs only the chunks up to it. ``read`` is called each time a chunk's
    slices have been read into its body: tensors mapped from a file can let go of the
    pages read so far.
    """
    plan = plan_chunks(tensors, chunk_bytes)
    if len(plan) == 1:
        yield encode_message(meta, tensors, codec)
        return
    fields = PackedFields.of(meta.model_dump(mode="json"))
    chain = xxhash.xxh3_128()
    for index, slices in enumerate(plan):
        encoded = _encode_chunk(tensors, slices, codec)
        body = _chunk_body(fields, encoded, ChunkInfo(index, len(plan), _DIGEST_UNSET), chain)
        del encoded  # a lossy codec's payloads: one chunk's at a time
        if read is not None:
            read()
        yield body


def chunk_count(tensors: Mapping[str, np.ndarray], chunk_bytes: int) -> int:
    return len(plan_chunks(tensors, chunk_bytes))


def most_body_bytes(tensors: Mapping[str, np.ndarray], chunk_bytes: int, metadata: int) -> int:
    """The most bytes the bodies that carry ``tensors`` take together, in one message or cut
    at ``chunk_bytes`` or any larger size, with a codec no larger than ``raw`` and at most
    ``metadata`` bytes of metadata fields per body.

    A chunk that is not the last is left with room for less than one aligned block, so it
    holds more than ``chunk_bytes`` less the largest block: that bounds how many chunks
    there are at this size, and at every larger one. Each chunk repeats the metadata and
    adds at most one slice (of the tensor its end cuts)."""
    if not tensors:
        return BODY_HEAD_BYTES + metadata
    raw = sum(t.nbytes for t in tensors.values())
    heads = [TENSOR_HEAD_BYTES + len(name.encode()) + 9 * t.ndim for name, t in tensors.items()]
    block = SLICE_ALIGN * max(t.dtype.itemsize for t in tensors.values())
    assert chunk_bytes > block, "a chunk holds at least one aligned block of every dtype"
    chunks = raw // (chunk_bytes - block) + 1
    return raw + sum(heads) + chunks * (BODY_HEAD_BYTES + metadata + max(heads))
