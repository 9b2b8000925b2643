"""A chunked global model received into one preallocated buffer per tensor.

The coordinator publishes a model larger than its chunk size as chunks
(:mod:`fedq.messages.chunks`). Each chunk's slices are copied (and cast from the wire's
dtype, e.g. fp16) straight into the model's own arrays, allocated when the first chunk of a
version arrives; the bodies are released as soon as they are copied, so the participant
holds the model once plus one chunk, never the whole body. The deliveries stay unacked
until the caller has trained and sent, as for a model in one message.

Only the newest version matters: a chunk of a newer version drops the one in assembly
(its deliveries are handed back to be acked), and a chunk of an older version is handed
back at once. A chunk that cannot follow the chunks in (another model of the same version:
a coordinator that redid it after a crash) starts the assembly again from it, and a model
whose chunks do not hash to the digests they carry is dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from fedq.messages.chunks import MIN_CHUNK_BYTES, ChunkChain, chunk_digest, most_body_bytes
from fedq.messages.codec import ChunkInfo, DecodedMessage, MalformedMessage, Weights
from fedq.messages.schema import ModelMeta
from fedq.messages.transport import Delivery

log = logging.getLogger("fedq.participant")

#: The most bytes a model's metadata fields take in a body: a federation name of at most
#: 64 characters, the kind, five integers and their keys, with room to spare.
MODEL_METADATA_BYTES = 512


def model_queue_bytes(model: Weights) -> int | None:
    """The byte bound of a participant's model queue (``x-max-length-bytes``), or None to
    keep only its newest message (``x-max-length: 1``), for a federation whose model has
    the arrays of ``model``.

    The queue is declared before any model comes, so before the participant learns the
    coordinator's chunk size (each model announces it: ``ModelMeta.chunk_bytes``). A model
    of at most ``MIN_CHUNK_BYTES``, the smallest size a coordinator may use, always comes
    in one message: the queue keeps the newest. A larger one may come in chunks of any
    announced size, so the queue is bounded by bytes instead, the oldest dropped first:
    room for the bodies of one model however it is cut (the smallest chunks repeat the
    metadata most), and, for a raw model of ordinary tensors, for less than two, so that
    a participant back from training finds only the newest model whole. So the broker keeps
    about one model per participant, whatever the chunk size. What the count bound does
    and this one does not: a model sent as ``fp16`` takes half, so two may wait; and
    ``federation.done`` waits behind the last model instead of dropping it. So a model in
    one message is skipped when something already waits behind it
    (``Participant._superseded``): the participant trains on the newest, as before."""
    if sum(w.nbytes for w in model.values()) <= MIN_CHUNK_BYTES:
        return None
    return most_body_bytes(model, MIN_CHUNK_BYTES, MODEL_METADATA_BYTES)


@dataclass
class _Assembly:
    meta: ModelMeta
    weights: Weights
    #: By chunk index: its own digest, and the digest it carries.
    chain: ChunkChain
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.chain.count

    def takes(self, meta: ModelMeta, chunk: ChunkInfo, own: bytes) -> bool:
        """Whether the chunk can belong to this model (the same version, cut the same way,
        and the digest it carries follows the chunks in, where it can be checked)."""
        if (meta.version, chunk.count) != (self.meta.version, self.count):
            return False
        if chunk.index in self.chain:
            return self.chain.same(chunk.index, own, chunk.digest)
        return self.chain.follows(chunk.index, own, chunk.digest)


def writable_copy(decoded: DecodedMessage) -> Weights:
    """Decoded tensors are read-only views of the body (maybe fp16): train on float copies."""
    return {t.name: np.array(t.array, dtype=t.dtype) for t in decoded.tensors}


@dataclass(frozen=True)
class WholeModel:
    meta: ModelMeta
    #: The participant's own arrays (a chunked model, assembled), or the message to copy
    #: them from (a model in one message: M virtual participants share its body until
    #: each is at work, so the copy is made then, not on arrival).
    source: Weights | DecodedMessage
    #: To ack once the update trained on it is confirmed.
    deliveries: list[Delivery]

    def own_weights(self) -> Weights:
        """Writable arrays of the model, the participant's own (run in a worker thread)."""
        if isinstance(self.source, DecodedMessage):
            return writable_copy(self.source)
        return self.source


class ModelAssembler:
    def __init__(self) -> None:
        self._current: _Assembly | None = None
        #: The newest version made whole: its late chunks and older ones are handed back.
        self._completed = -1

    @property
    def partial(self) -> tuple[int, int, int] | None:
        """The version part-way assembled, how many of its chunks are in and how many it
        has; None when none is."""
        if (current := self._current) is None:
            return None
        return current.meta.version, len(current.chain), current.count

    def add(
        self, meta: ModelMeta, decoded: DecodedMessage, delivery: Delivery
    ) -> tuple[WholeModel | None, list[Delivery]]:
        """Copy a chunk in. Returns the model once whole, and deliveries to ack now (an
        older version's, a dropped assembly's, a copy's). Raises MalformedMessage."""
        chunk = decoded.chunk
        assert chunk is not None, "a chunk"
        done: list[Delivery] = []
        current = self._current
        if meta.version <= self._completed or (
            current is not None and meta.version < current.meta.version
        ):
            return None, [delivery]
        own = chunk_digest(decoded.tensors)
        if current is not None and not current.takes(meta, chunk, own):
            done += current.deliveries
            current = self._current = None
        if current is None:
            current = self._current = _Assembly(meta, {}, ChunkChain(chunk.count))
        if chunk.index in current.chain:
            return None, [*done, delivery]  # a copy (redelivered): the first one counts
        for tensor in decoded.tensors:
            assert tensor.slice is not None, "the decoder gives every tensor of a chunk its slice"
            target = current.weights.get(tensor.name)
            if target is None:
                target = current.weights[tensor.name] = np.empty(tensor.shape, tensor.dtype)
            if target.shape != tensor.shape or target.dtype != tensor.dtype:
                raise MalformedMessage("schema", f"tensor {tensor.name!r} changed between chunks")
            start, stop = tensor.slice
            target.reshape(-1)[start:stop] = tensor.array
        current.chain.add(chunk.index, own, chunk.digest)
        current.deliveries.append(delivery)
        if not current.chain.whole:
            return None, done
        self._current = None
        if not current.chain.matches():
            log.warning("dropped model v%d: its chunks do not hash to their digests", meta.version)
            return None, [*done, *current.deliveries]
        self._completed = meta.version
        return WholeModel(current.meta, current.weights, current.deliveries), done
