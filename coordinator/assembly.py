"""The assembler: the chunks of a large update made whole on disk, folded once complete.

A chunk passes the intake's checks on its own (:class:`~.intake.ChunkCandidate`); the
assembler keeps its delivery unacked and appends its body to the update's spool file in
``<state dir>/spool``, then the body is released. When an update's last chunk is in, the
whole is checked (each value present exactly once, every digest its chunks carry, the norm) and
the service folds it, reading the spool back one chunk at a time (:class:`ChunkedDelta`),
unless its chunks were folded as they came (:mod:`~.strategies.early_mean`, in a version
that waits for every participant: the collector hands each chunk's body over as
:class:`ChunkBody` once it is spooled).

Why a spool:
- An update that fails after some of its chunks were folded (a chunk never comes, the
  digest does not match, the norm is over the bound, it went stale meanwhile) must be
  taken out of the sums again; float sums cannot be undone exactly, and a per-update
  scratch in RAM costs the model's size for every update in flight, which grows with the
  number of senders. The spool is what the sums are made again from, and costs disk, not
  memory.
- A refused update goes to the dead-letter queue as the very chunk bodies that came, read
  back from the spool: RabbitMQ's own dead-lettering could not add fedq's reason.
- The spool is a cache: the broker still holds every chunk unacked. After a crash the
  spool is wiped and the redelivered chunks rebuild it.
- The cost is one write and one read of each chunk (page cache, usually not the disk).
  The files are reused (:mod:`~.spool_files`), so the write is over pages already cached.

Memory: the bodies in flight (the consumer's prefetch) plus one chunk while folding;
never a whole update. Disk: at most ``max_streams`` updates of at most ``max_bytes`` in
assembly, plus those an aggregation keeps (:meth:`ChunkedDelta.keep`) until its version
closes, plus at most ``max_streams`` retired files waiting for reuse.
What a sender can do: chunks of updates that never complete are refused ``incomplete``
``timeout_seconds`` after their last chunk came; more than ``max_streams`` updates in
assembly at once are refused ``too_many_streams``; a stream beyond ``max_bytes`` is
refused ``too_large``. Only the service's loop calls in (one thread at a time).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from fedq.coordinator.intake import chunk_copy_digest
from fedq.coordinator.spool_files import SpoolFiles
from fedq.coordinator.strategies.base import DeltaPieces, Piece
from fedq.coordinator.verdicts import ChunkCandidate, Rejection
from fedq.messages.chunks import SLICE_ALIGN, ChunkChain, TensorSlice
from fedq.messages.codec import ChunkInfo, ModelSpec, decode_message
from fedq.messages.schema import UpdateMeta
from fedq.messages.transport import Delivery

#: Numbers the spool files' second names (:meth:`ChunkedDelta.keep`).
_KEPT = itertools.count()

#: Refused update ids remembered, so their later chunks are refused at once, not spooled.
REMEMBERED_REFUSALS = 1024


@dataclass(slots=True)
class SpooledChunk:
    delivery: Delivery
    offset: int
    size: int
    slices: list[TensorSlice]


@dataclass
class Stream:
    """One update in assembly: its chunks so far, their bodies in ``spool``."""

    meta: UpdateMeta
    count: int
    spool: Path
    #: Where ``spool`` came from and goes back to when closed.
    files: SpoolFiles
    chunks: dict[int, SpooledChunk] = field(default_factory=dict)
    #: The chunks' own digests (computed by the intake) and the ones they carry.
    chain: ChunkChain = field(init=False)
    sum_squares: float = 0.0
    size: int = 0
    last_seen: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.chain = ChunkChain(self.count)

    @property
    def update_id(self) -> str:
        return self.meta.update_id

    @property
    def complete(self) -> bool:
        return len(self.chunks) == self.count

    @property
    def digest(self) -> str:
        """The whole's digest: what its last chunk carries (checked by :meth:`Assembler.
        finish`)."""
        return self.chain.digest

    def deliveries(self) -> dict[int, Delivery]:
        return {index: chunk.delivery for index, chunk in self.chunks.items()}

    def copies(self) -> dict[int, str]:
        """By chunk index, what a copy of it must match once the update is held."""
        chain = self.chain
        return {
            index: chunk_copy_digest(
                self.meta, ChunkInfo(index, self.count, chain.carried[index]), own
            )
            for index, own in chain.own.items()
        }

    def read(self, index: int, spool: Path | None = None) -> bytes:
        """The body of chunk ``index`` as it came (from ``spool``, another name of the
        stream's spool file, if given)."""
        chunk = self.chunks[index]
        with (spool or self.spool).open("rb") as f:
            f.seek(chunk.offset)
            return f.read(chunk.size)

    def close(self) -> None:
        self.files.retire(self.spool)


@dataclass(frozen=True)
class Pending:
    """The chunk is spooled; its update is not complete."""

    stream: Stream


@dataclass(frozen=True)
class ChunkCopy:
    """The same bytes as a chunk already spooled: the new delivery is kept, ``replaced``
    is the caller's to ack (as :meth:`~.held.HeldDeliveries.replace` does)."""

    replaced: Delivery


@dataclass(frozen=True)
class Assembled:
    """Every chunk is in; :meth:`Assembler.finish` checks the whole."""

    stream: Stream


Outcome = Pending | ChunkCopy | Assembled


class ChunkedDelta(DeltaPieces):
    """A spooled update's delta, read back one chunk at a time."""

    def __init__(
        self,
        stream: Stream,
        spec: ModelSpec,
        spool: Path | None = None,
        indices: range | None = None,
    ) -> None:
        super().__init__({name: (s.shape, s.dtype) for name, s in spec.items()})
        self.stream = stream
        self.model_spec = spec
        #: A name of its own for the spool file once kept (:meth:`keep`), else None.
        self._kept: Path | None = spool
        #: The chunks read (:meth:`parts` splits them): every one of the stream's by default.
        self.indices = range(stream.count) if indices is None else indices

    def keep(self) -> ChunkedDelta | None:
        """The same delta under a second name of the spool file (a hard link, no copy), so
        closing the stream leaves it readable until :meth:`release` (an aggregation keeps
        the heaviest update of a version aside this way: disk, not a model's worth of RAM).
        None when the file system makes no hard links."""
        kept = self.stream.spool.with_name(f"{self.stream.spool.name}.kept-{next(_KEPT)}")
        try:
            os.link(self.stream.spool, kept)
        except OSError:
            return None
        return ChunkedDelta(self.stream, self.model_spec, kept)

    def release(self) -> None:
        if self._kept is not None:
            self.stream.files.retire(self._kept)

    def parts(self, n: int) -> list[DeltaPieces]:
        """The chunks in ``n`` groups (every n-th): each chunk covers values of its own (the
        assembler checked that every value is sent exactly once), so groups are disjoint."""
        if n < 2 or len(self.indices) < 2:
            return [self]
        runs = [self.indices[i::n] for i in range(n)]
        return [ChunkedDelta(self.stream, self.model_spec, self._kept, run) for run in runs]

    def __iter__(self) -> Iterator[Piece]:
        for index in self.indices:
            yield from _chunk_pieces(self.stream.read(index, self._kept), self.model_spec)

    def norm(self) -> float:
        return math.sqrt(self.stream.sum_squares)


class ChunkBody(DeltaPieces):
    """The values of one chunk, over its body as it came (decoded again when read)."""

    def __init__(self, body: bytes, spec: ModelSpec) -> None:
        super().__init__({name: (s.shape, s.dtype) for name, s in spec.items()})
        self.body = body
        self.model_spec = spec

    def __iter__(self) -> Iterator[Piece]:
        return _chunk_pieces(self.body, self.model_spec)

    def norm(self) -> float:
        raise NotImplementedError("a chunk's sum of squares comes from the intake")


def _chunk_pieces(body: bytes, spec: ModelSpec) -> Iterator[Piece]:
    """The pieces of a chunk's body (it passed the intake: every tensor has its slice)."""
    for tensor in decode_message(body, spec).tensors:
        assert tensor.slice is not None, "a chunk passed the intake"
        yield tensor.name, tensor.slice[0], tensor.array.reshape(-1)


def _file_name(update_id: str) -> str:
    """A spool file name for any update id (ids are the sender's strings)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", update_id)[:64]
    return f"{safe}-{xxhash.xxh64_hexdigest(update_id.encode())}.chunks"


class Assembler:
    def __init__(
        self,
        spool_dir: Path,
        spec: ModelSpec,
        *,
        max_bytes: int,
        max_norm: float | None,
        max_streams: int,
        timeout_seconds: float,
        chunk_bytes: int,
        max_per_participant: int,
    ) -> None:
        self.spool_dir = spool_dir
        # Whatever a previous coordinator left: the broker redelivers those chunks.
        shutil.rmtree(spool_dir, ignore_errors=True)
        spool_dir.mkdir(parents=True, exist_ok=True)
        self.files = SpoolFiles(spool_dir, max_streams)
        self.spec = spec
        self.max_bytes = max_bytes
        self.max_norm = max_norm
        self.max_streams = max_streams
        self.max_per_participant = max_per_participant
        self.timeout_seconds = timeout_seconds
        #: How the coordinator's chunk size may cut an update of this model, in any order
        #: of its tensors (participants cut by the size the model announced).
        self.cuts = ChunkBounds.of(spec, chunk_bytes)
        self.streams: dict[str, Stream] = {}
        #: Streams in assembly per participant (the one its metadata names, verified with
        #: --verify-identity).
        self._per_participant: Counter[str] = Counter()
        self._refused: OrderedDict[str, Rejection] = OrderedDict()

    def add(self, candidate: ChunkCandidate, delivery: Delivery) -> Outcome:
        """Spool ``candidate``'s body (``delivery.body``); raises Rejection for this chunk
        alone (the rest of its update stays in assembly)."""
        meta, chunk = candidate.meta, candidate.chunk
        earlier = self._refused.get(meta.update_id)
        if earlier is not None:
            raise Rejection(
                earlier.reason, f"an earlier chunk's update was refused: {earlier.detail}"
            )
        self._check_plan(candidate)
        stream = self.streams.get(meta.update_id)
        if stream is not None:
            if meta != stream.meta or chunk.count != stream.count:
                raise Rejection(
                    "conflicting_chunk",
                    f"chunk {chunk.index} of update {meta.update_id} does not match its other "
                    "chunks' metadata or count",
                )
            known = stream.chunks.get(chunk.index)
            if known is not None:
                if not stream.chain.same(chunk.index, candidate.digest, chunk.digest):
                    raise Rejection(
                        "conflicting_duplicate",
                        f"chunk {chunk.index} of update {meta.update_id} came before with other "
                        "contents",
                    )
                replaced, known.delivery = known.delivery, delivery
                return ChunkCopy(replaced)  # a copy is no progress: its stream's clock runs on
        chain = ChunkChain(chunk.count) if stream is None else stream.chain
        if not chain.follows(chunk.index, candidate.digest, chunk.digest):
            raise Rejection(  # this chunk alone: another one may still come in its place
                "digest_mismatch",
                f"chunk {chunk.index} of update {meta.update_id} does not carry the digest of "
                f"its update's chunks 0 to {chunk.index}",
            )
        if stream is None:
            stream = self._open_stream(candidate)
        stream.last_seen = time.monotonic()
        body = delivery.body
        if stream.size + len(body) > self.max_bytes:
            raise Rejection(
                "too_large",
                f"update {meta.update_id}'s chunks exceed the limit of {self.max_bytes} bytes",
            )
        with stream.spool.open("r+b") as f:  # a reused file: over what it held
            f.seek(stream.size)
            f.write(body)
        stream.chunks[chunk.index] = SpooledChunk(
            delivery, stream.size, len(body), candidate.slices
        )
        stream.chain.add(chunk.index, candidate.digest, chunk.digest)
        stream.size += len(body)
        stream.sum_squares += candidate.sum_squares
        return Assembled(stream) if stream.complete else Pending(stream)

    def _check_plan(self, candidate: ChunkCandidate) -> None:
        """Rejection unless the chunk is one the model's chunk size can make: no more
        chunks than any order of the tensors makes, and every chunk but the last fuller
        than the chunk size less one aligned block (so none is empty or tiny). A
        participant's tensors may come in another order than the coordinator's (a model
        assembled from chunks that arrived out of order), so the slices themselves are
        not compared."""
        chunk, cuts = candidate.chunk, self.cuts
        raw = sum((part.stop - part.start) * cuts.itemsize[part.name] for part in candidate.slices)
        least = 1 if chunk.index == chunk.count - 1 else cuts.least
        if chunk.count > cuts.most_chunks or not least <= raw <= cuts.most_bytes:
            raise Rejection(
                "chunk_plan",
                f"chunk {chunk.index} of {chunk.count} carries {raw} bytes: the model's chunk "
                f"size makes at most {cuts.most_chunks} chunks of {cuts.least} to "
                f"{cuts.most_bytes} bytes (the last of at least 1)",
            )

    def _open_stream(self, candidate: ChunkCandidate) -> Stream:
        """A new stream for ``candidate``'s update, within the slots: ``max_streams`` in
        all, ``max_per_participant`` for its participant (an attacker keeping streams open by
        re-sending a chunk of each now and then holds its own few slots, not all)."""
        meta = candidate.meta
        if len(self.streams) >= self.max_streams:
            raise Rejection(
                "too_many_streams",
                f"{len(self.streams)} chunked updates are in assembly already, the most "
                "allowed (--max-streams)",
            )
        if self._per_participant[meta.participant] >= self.max_per_participant:
            raise Rejection(
                "too_many_streams",
                f"{meta.participant} has {self.max_per_participant} chunked updates in assembly "
                "already, the most allowed per participant (--max-streams-per-participant)",
            )
        stream = Stream(
            meta, candidate.chunk.count, self.spool_dir / _file_name(meta.update_id), self.files
        )
        self.files.take(stream.spool)
        self.streams[meta.update_id] = stream
        self._per_participant[meta.participant] += 1
        return stream

    def _remove(self, stream: Stream) -> None:
        if self.streams.pop(stream.update_id, None) is not None:
            self._per_participant[stream.meta.participant] -= 1
            if not self._per_participant[stream.meta.participant]:
                del self._per_participant[stream.meta.participant]

    def finish(self, stream: Stream) -> ChunkedDelta:
        """The complete ``stream``'s delta, or Rejection: every value of every tensor
        exactly once, the digest of the whole, the norm bound. Removes it from assembly
        either way (the caller folds or dead-letters it, then closes it)."""
        self._remove(stream)
        try:
            self._check_coverage(stream)
            if not stream.chain.matches():
                raise Rejection(
                    "digest_mismatch",
                    f"update {stream.update_id}'s chunks do not hash to the digests they carry",
                )
            delta = ChunkedDelta(stream, self.spec)
            if self.max_norm is not None and delta.norm() > self.max_norm:
                raise Rejection(
                    "norm_exceeded",
                    f"update L2 norm {delta.norm():.4g} > bound {self.max_norm:.4g}",
                )
            return delta
        except Rejection as rejection:
            self.remember(stream.update_id, rejection)
            raise

    def _check_coverage(self, stream: Stream) -> None:
        ranges: dict[str, list[tuple[int, int]]] = {name: [] for name in self.spec}
        for chunk in stream.chunks.values():
            for part in chunk.slices:
                ranges[part.name].append((part.start, part.stop))
        for name, spec in self.spec.items():
            expected = math.prod(spec.shape)
            covered = 0
            for start, stop in sorted(ranges[name]):
                if start != covered:
                    raise Rejection(
                        "chunk_coverage",
                        f"tensor {name!r}: values from {min(start, covered)} are "
                        f"{'missing' if start > covered else 'sent twice'}",
                    )
                covered = stop
            if covered != expected:
                raise Rejection(
                    "chunk_coverage", f"tensor {name!r}: {covered} of {expected} values sent"
                )

    def remember(self, update_id: str, rejection: Rejection) -> None:
        self._refused[update_id] = rejection.bare()
        while len(self._refused) > REMEMBERED_REFUSALS:
            self._refused.popitem(last=False)

    def next_expiry(self) -> float | None:
        """When the oldest-waiting stream times out (monotonic), or None."""
        if not self.streams:
            return None
        return min(s.last_seen for s in self.streams.values()) + self.timeout_seconds

    def expired(self, now: float | None = None) -> list[tuple[Stream, Rejection]]:
        """Streams whose last chunk came ``timeout_seconds`` ago, removed from assembly,
        each with its ``incomplete`` rejection."""
        now = time.monotonic() if now is None else now
        late = []
        for stream in [
            s for s in self.streams.values() if now - s.last_seen >= self.timeout_seconds
        ]:
            rejection = Rejection(
                "incomplete",
                f"{len(stream.chunks)} of update {stream.update_id}'s {stream.count} chunks came, "
                f"then none for {self.timeout_seconds:g} s",
            )
            self.take(stream, rejection)
            late.append((stream, rejection))
        return late

    def take(self, stream: Stream, rejection: Rejection) -> None:
        """Remove ``stream`` from assembly, refused for ``rejection``."""
        self._remove(stream)
        self.remember(stream.update_id, rejection)

    def drain(self) -> list[Stream]:
        """Every stream still in assembly, removed (the federation is done)."""
        streams, self.streams = list(self.streams.values()), {}
        self._per_participant.clear()
        return streams


@dataclass(frozen=True)
class ChunkBounds:
    """What any cut of the model at a chunk size looks like (see
    :func:`~fedq.messages.chunks.plan_chunks`): a chunk closes only when less than one
    aligned block of room is left, so every chunk but the last holds more than
    ``chunk_bytes`` less the largest block, and that bounds how many there are."""

    itemsize: dict[str, int]
    most_chunks: int
    most_bytes: int
    least: int

    @classmethod
    def of(cls, spec: ModelSpec, chunk_bytes: int) -> ChunkBounds:
        itemsize = {name: s.dtype.itemsize for name, s in spec.items()}
        raw = sum(math.prod(s.shape) * s.dtype.itemsize for s in spec.values())
        block = SLICE_ALIGN * max(itemsize.values(), default=1)
        if raw <= chunk_bytes:  # one message: an honest update never comes in chunks
            return cls(itemsize, 1, raw, 1)
        assert chunk_bytes > block, "a chunk holds at least one aligned block of every dtype"
        return cls(itemsize, raw // (chunk_bytes - block) + 1, chunk_bytes, chunk_bytes - block + 1)
