"""The wire codec: exact round trips, zero-copy decoding, and clear errors on bad bytes."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedq.messages.codec import MalformedMessage, decode_message, encode_message
from fedq.messages.msgpack_view import MsgpackError, unpack_view
from fedq.messages.schema import ModelMeta, UpdateMeta

META = UpdateMeta(federation="f", participant="p1", round=2, base_version=1, num_examples=10)

float_arrays = hnp.arrays(
    dtype=np.float32,
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
    elements=st.floats(-1e4, 1e4, width=32),
)


@given(st.dictionaries(st.text(min_size=1, max_size=8), float_arrays, max_size=5))
def test_raw_round_trip_is_exact(tensors):
    decoded = decode_message(encode_message(META, tensors, "raw"))
    assert decoded.meta(UpdateMeta) == META
    out = decoded.weights()
    assert list(out) == list(tensors)
    for name, array in tensors.items():
        assert out[name].dtype == np.float32 and out[name].shape == array.shape
        np.testing.assert_array_equal(out[name], array)


@given(float_arrays)
def test_fp16_round_trip_is_within_half_precision(array):
    decoded = decode_message(encode_message(META, {"w": array}, "fp16")).tensors[0]
    assert decoded.codec == "fp16"
    assert (decoded.dtype, decoded.array.dtype) == (np.dtype(np.float32), np.dtype(np.float16))
    np.testing.assert_allclose(decoded.array.astype(np.float32), array, rtol=2**-10, atol=1e-4)


def test_fp16_halves_the_body():
    tensors = {"w": np.ones(100_000, dtype=np.float32)}
    raw = len(encode_message(META, tensors, "raw"))
    half = len(encode_message(META, tensors, "fp16"))
    assert half < raw * 0.51


def test_decoded_tensors_are_views_into_the_body():
    body = encode_message(META, {"w": np.arange(1000, dtype=np.float32)})
    array = decode_message(body).tensors[0].array
    start = np.frombuffer(body, dtype=np.uint8).__array_interface__["data"][0]
    address = array.__array_interface__["data"][0]
    assert start <= address < start + len(body)
    assert not array.flags.writeable


@given(
    st.dictionaries(st.text(min_size=1, max_size=20), float_arrays, min_size=1, max_size=6),
    st.from_regex(r"[A-Za-z0-9_./-]{0,30}", fullmatch=True),  # a metric name's characters
)
def test_every_tensor_starts_16_bytes_aligned_from_the_body_start(tensors, participant_name):
    meta = UpdateMeta(
        federation="f", participant="p" + "x" * len(participant_name), round=1,
        base_version=0, num_examples=1, metrics={"m" + participant_name: 1.0},
    )  # fmt: skip
    body = encode_message(meta, tensors)
    start = np.frombuffer(body, dtype=np.uint8).__array_interface__["data"][0]
    for tensor in decode_message(body).tensors:
        if tensor.array.size:
            assert (tensor.array.__array_interface__["data"][0] - start) % 16 == 0
            assert tensor.array.flags.aligned


def test_a_tensor_without_pad_still_decodes():
    plain = msgpack.packb(
        {**META.model_dump(mode="json"), "tensors": [
            {"name": "w", "dtype": "float32", "shape": [2], "codec": "raw",
             "data": np.ones(2, np.float32).tobytes()},
        ]},
        use_bin_type=True,
    )  # fmt: skip
    np.testing.assert_array_equal(decode_message(plain).weights()["w"], [1, 1])


def test_body_is_plain_msgpack_that_any_client_reads():
    body = encode_message(META, {"w": np.arange(3, dtype=np.float32)})
    plain = msgpack.unpackb(body)
    assert plain["participant"] == "p1"
    assert plain["tensors"][0]["shape"] == [3]
    assert np.frombuffer(plain["tensors"][0]["data"], np.float32).tolist() == [0, 1, 2]


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=300)
    | st.binary(max_size=300),
    lambda children: (
        st.lists(children, max_size=20)
        | st.dictionaries(st.text(max_size=10), children, max_size=20)
    ),
    max_leaves=40,
)


def _bytes_of_bins(value):
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, list):
        return [_bytes_of_bins(v) for v in value]
    if isinstance(value, dict):
        return {k: _bytes_of_bins(v) for k, v in value.items()}
    return value


@given(msgpack_values)
def test_view_reader_agrees_with_msgpack(value):
    packed = msgpack.packb(value, use_bin_type=True)
    assert _bytes_of_bins(unpack_view(packed)) == msgpack.unpackb(packed, raw=False)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_malformed_only(data):
    try:
        decoded = decode_message(data)
        decoded.meta(UpdateMeta)
    except MalformedMessage as exc:
        assert exc.reason in {"undecodable", "schema"}


def test_truncated_body_is_undecodable():
    body = encode_message(META, {"w": np.ones(10, dtype=np.float32)})
    with pytest.raises(MalformedMessage) as err:
        decode_message(body[:-3])
    assert err.value.reason == "undecodable"


def test_payload_size_must_match_shape():
    body = bytearray(encode_message(META, {"w": np.ones(4, dtype=np.float32)}))
    plain = msgpack.unpackb(bytes(body))
    plain["tensors"][0]["shape"] = [5]
    with pytest.raises(MalformedMessage, match="needs 20"):
        decode_message(msgpack.packb(plain))


def test_wrong_kind_of_message_fails_schema_validation():
    body = encode_message(ModelMeta(federation="f", version=1, round=1, rounds_total=3), {})
    with pytest.raises(MalformedMessage) as err:
        decode_message(body).meta(UpdateMeta)
    assert err.value.reason == "schema"


def test_ext_types_are_refused():
    with pytest.raises(MsgpackError):
        unpack_view(msgpack.packb(msgpack.ExtType(1, b"x")))
