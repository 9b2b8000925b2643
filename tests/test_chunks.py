"""Chunking: the plan covers every value once within the size, chunks decode to what a
whole message would, each chunk carries the digest of the chunks up to it (which catches an
altered chunk, and a chunk of another message, in order), and a participant assembles a
chunked model from chunks in any order."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from fedq.messages import chunks
from fedq.messages.chunks import (
    SLICE_ALIGN,
    ChunkChain,
    carried_digests,
    chunk_digest,
    encode_chunks,
    plan_chunks,
)
from fedq.messages.codec import decode_message, encode_message
from fedq.messages.schema import ModelMeta, UpdateMeta
from fedq.messages.unfilled import FILLS_BYTES
from fedq.participant.compression import ErrorFeedback
from fedq.participant.model_assembly import ModelAssembler

META = UpdateMeta(federation="f", participant="p", round=1, base_version=0, num_examples=5)


def model(sizes: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"t{i}": rng.normal(size=n).astype(np.float32) for i, n in enumerate(sizes)}


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40_000), min_size=1, max_size=6),
    chunk_bytes=st.integers(1 << 10, 1 << 18),
)
def test_the_plan_covers_every_value_once_within_the_chunk_size(sizes, chunk_bytes):
    tensors = {f"t{i}": np.empty(n, np.float32) for i, n in enumerate(sizes)}
    plan = plan_chunks(tensors, chunk_bytes)
    covered: dict[str, list[tuple[int, int]]] = {name: [] for name in tensors}
    for chunk in plan:
        assert chunk or len(plan) == 1, "no empty chunk"
        raw = sum((s.stop - s.start) * 4 for s in chunk)
        assert raw <= chunk_bytes or (
            len(chunk) == 1 and chunk[0].stop - chunk[0].start <= SLICE_ALIGN
        )
        for s in chunk:
            covered[s.name].append((s.start, s.stop))
    for name, ranges in covered.items():
        position = 0
        for start, stop in sorted(ranges):
            assert start == position and stop > start
            assert start % SLICE_ALIGN == 0, "cuts fall on int8's blocks"
            position = stop
        assert position == tensors[name].size


def decoded_whole(bodies: list[bytes], like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {name: np.full(t.size, np.nan, np.float32) for name, t in like.items()}
    chain = ChunkChain(len(bodies))
    for index, body in enumerate(bodies):
        decoded = decode_message(body)
        assert decoded.chunk is not None and decoded.chunk.count == len(bodies)
        assert decoded.chunk.index == index
        chain.add(index, chunk_digest(decoded.tensors), decoded.chunk.digest)
        for t in decoded.tensors:
            assert t.slice is not None
            out[t.name][t.slice[0] : t.slice[1]] = t.array
    assert chain.matches()
    whole = b"".join(chain.own[i] for i in range(len(bodies)))
    assert chain.digest == xxhash.xxh3_128_hexdigest(whole)
    return out


def test_chunks_decode_to_what_one_message_would_for_every_codec():
    tensors = model([30_000, 7, 50_000])
    for codec in ("raw", "fp16", "int8"):
        bodies = list(encode_chunks(META, tensors, codec, chunk_bytes=1 << 16))
        assert len(bodies) > 1
        whole = decode_message(encode_message(META, tensors, codec)).weights()
        for name, values in decoded_whole(bodies, tensors).items():
            np.testing.assert_array_equal(values, np.asarray(whole[name], np.float32).reshape(-1))


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 30_000), min_size=1, max_size=4),
    codec=st.sampled_from(["raw", "fp16", "int8", "topk:0.1"]),
)
def test_bodies_hashed_from_themselves_are_those_hashed_from_the_tensors(
    sizes: list[int], codec: str
):
    """A chunk's body is made first, its slices hashed from it and its digest written in
    (where bytes can be filled in), or its slices hashed first: the bytes are the same."""
    tensors = model(sizes, seed=len(sizes))
    assert FILLS_BYTES, "this interpreter fills bytes in: the path under test"
    filled_in = list(encode_chunks(META, tensors, codec, chunk_bytes=1 << 14))
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(chunks, "FILLS_BYTES", False)
        hashed_first = list(encode_chunks(META, tensors, codec, chunk_bytes=1 << 14))
    assert filled_in == hashed_first


def own_and_carried(bodies: list[bytes]) -> list[tuple[bytes, str]]:
    out = []
    for body in bodies:
        decoded = decode_message(body)
        assert decoded.chunk is not None
        out.append((chunk_digest(decoded.tensors), decoded.chunk.digest))
    return out


def test_an_altered_chunk_does_not_follow_its_earlier_chunks_nor_hash_to_the_whole():
    tensors = model([40_000])
    bodies = list(encode_chunks(META, tensors, "raw", chunk_bytes=1 << 15))
    chunks = own_and_carried(bodies)
    altered = bytearray(bodies[1])
    altered[-4] ^= 1
    (altered_own, altered_carried), *_ = own_and_carried([bytes(altered)])
    assert altered_carried == chunks[1][1]  # what it claims is unchanged
    chain = ChunkChain(len(chunks))
    chain.add(0, *chunks[0])
    assert chain.follows(1, *chunks[1])
    assert not chain.follows(1, altered_own, altered_carried)
    chain.add(1, altered_own, altered_carried)  # taken after a gap, say
    for index in range(2, len(chunks)):
        chain.add(index, *chunks[index])
    assert chain.whole and not chain.matches()


@settings(max_examples=50, deadline=None)
@given(order=st.permutations(range(6)), other_at=st.integers(0, 5))
def test_honest_chunks_follow_in_any_order_and_one_of_another_message_not_in_order(
    order: list[int], other_at: int
):
    """Chunks that come after a gap are taken on trust until the message is whole; one of
    another message under the same cut is caught once every chunk before it is in (a chunk
    0 binds nothing before it: any message's first chunk follows nothing)."""
    tensors = model([6 * 8192])
    honest = own_and_carried(list(encode_chunks(META, tensors, "raw", chunk_bytes=1 << 15)))
    assert len(honest) == 6
    other = own_and_carried(
        list(encode_chunks(META, {k: v + 1 for k, v in tensors.items()}, "raw", 1 << 15))
    )
    chain = ChunkChain(6)
    for index in order:
        assert chain.follows(index, *honest[index])
        if index == other_at:
            gap = any(i not in chain for i in range(index))
            assert chain.follows(index, *other[index]) == (gap or index == 0)
        chain.add(index, *honest[index])
    assert chain.matches()
    assert list(carried_digests([own for own, _ in honest])) == [c for _, c in honest]


def test_error_feedback_sees_the_slices_that_are_sent():
    """What the coordinator decodes plus the residual is exactly the corrected delta,
    chunked or not: int8 scales each slice's blocks, topk selects across the update."""
    tensors = model([50_000, 3_000], seed=1)
    for codec, chunk_bytes in itertools.product(("topk:0.05", "int8"), (1 << 15, 1 << 24)):
        feedback = ErrorFeedback(codec)
        corrected = feedback.compress(dict(tensors), chunk_bytes)
        bodies = list(encode_chunks(META, corrected, feedback.wire_codec, chunk_bytes))
        if len(bodies) > 1:
            sent = decoded_whole(bodies, tensors)
        else:
            sent = {
                k: np.asarray(v).reshape(-1) for k, v in decode_message(bodies[0]).weights().items()
            }
        for name, values in tensors.items():
            np.testing.assert_allclose(
                sent[name] + feedback.residual[name].reshape(-1), values.reshape(-1), atol=1e-6
            )


class FakeDelivery:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def release_body(self) -> None:
        self.body = b""


def test_a_participant_assembles_the_newest_model_from_chunks_in_any_order():
    tensors = model([20_000, 9_000], seed=2)
    newer = {k: v + 1 for k, v in tensors.items()}

    def bodies(version: int, weights: dict[str, np.ndarray]) -> list[bytes]:
        meta = ModelMeta(federation="f", version=version, round=version + 1, rounds_total=9)
        return list(encode_chunks(meta, weights, "raw", chunk_bytes=1 << 14))

    old, new = bodies(3, tensors), bodies(4, newer)
    assembler = ModelAssembler()
    acked = []
    complete = None
    # Half of v3, then v4 in reverse with one copy, then the rest of v3 (too old now).
    sequence = old[:3] + new[::-1][:2] + [new[-1]] + new[::-1][2:] + old[3:]
    for body in sequence:
        decoded = decode_message(body)
        delivery = FakeDelivery(body)
        whole, done = assembler.add(decoded.meta(ModelMeta), decoded, delivery)  # type: ignore[arg-type]
        acked += done
        if whole is not None:
            complete = whole
    assert complete is not None and complete.meta.version == 4
    weights = complete.own_weights()
    for name, values in newer.items():
        np.testing.assert_array_equal(weights[name], values)
        assert weights[name].flags.writeable
    assert len(complete.deliveries) == len(new)
    assert len(acked) == len(old) + 1  # every v3 chunk and the copy, handed back to ack


@settings(max_examples=30, deadline=None)
@given(order=st.permutations(range(4)))
def test_a_version_redone_with_other_weights_replaces_the_one_in_assembly(order: list[int]):
    """A coordinator that died before its ledger commit redoes the version, maybe with other
    updates: the same version number, other weights. Chunks of the first that came are
    dropped as soon as one of the redone model's cannot follow them; the participant ends
    with the redone model whatever order its chunks come in."""
    first, redone = model([4 * 8192], seed=3), model([4 * 8192], seed=4)
    meta = ModelMeta(federation="f", version=5, round=6, rounds_total=9)
    old = list(encode_chunks(meta, first, "raw", chunk_bytes=1 << 15))
    new = list(encode_chunks(meta, redone, "raw", chunk_bytes=1 << 15))
    assert len(old) == len(new) == 4
    assembler = ModelAssembler()
    acked, complete = [], None
    for body in old[:3] + [new[i] for i in order]:
        decoded = decode_message(body)
        whole, done = assembler.add(decoded.meta(ModelMeta), decoded, FakeDelivery(body))  # type: ignore[arg-type]
        acked += done
        complete = whole or complete
    assert complete is not None
    weights = complete.own_weights()
    for name, values in redone.items():
        np.testing.assert_array_equal(weights[name], values)
    assert sorted(d.body for d in acked) == sorted(old[:3])
