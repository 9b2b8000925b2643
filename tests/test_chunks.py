"""Chunking: the plan covers every value once within the size, chunks decode to what a
whole message would, the digest catches an altered chunk, and a participant assembles a
chunked model from chunks in any order."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedq.messages.chunks import SLICE_ALIGN, chunk_digest, encode_chunks, plan_chunks, whole_digest
from fedq.messages.codec import decode_message, encode_message
from fedq.messages.schema import ModelMeta, UpdateMeta
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
    digests = []
    for body in bodies:
        decoded = decode_message(body)
        assert decoded.chunk is not None and decoded.chunk.count == len(bodies)
        digests.append(chunk_digest(decoded.tensors))
        for t in decoded.tensors:
            assert t.slice is not None
            out[t.name][t.slice[0] : t.slice[1]] = t.array
    last = decode_message(bodies[-1]).chunk
    assert last is not None and whole_digest(digests) == last.digest
    return out


def test_chunks_decode_to_what_one_message_would_for_every_codec():
    tensors = model([30_000, 7, 50_000])
    for codec in ("raw", "fp16", "int8"):
        bodies = list(encode_chunks(META, tensors, codec, chunk_bytes=1 << 16))
        assert len(bodies) > 1
        whole = decode_message(encode_message(META, tensors, codec)).weights()
        for name, values in decoded_whole(bodies, tensors).items():
            np.testing.assert_array_equal(values, np.asarray(whole[name], np.float32).reshape(-1))


def test_an_altered_chunk_changes_the_digest_of_the_whole():
    tensors = model([40_000])
    bodies = list(encode_chunks(META, tensors, "raw", chunk_bytes=1 << 15))
    digests = [chunk_digest(decode_message(b).tensors) for b in bodies]
    altered = bytearray(bodies[1])
    altered[-4] ^= 1
    digests[1] = chunk_digest(decode_message(bytes(altered)).tensors)
    first = decode_message(bodies[0]).chunk
    assert first is not None and whole_digest(digests) != first.digest


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
