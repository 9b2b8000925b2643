"""The body of every fedq message: one msgpack map of metadata fields plus ``tensors``.

Layout (msgpack)::

    {<metadata fields of the pydantic model>...,
     "chunk": {"index": int, "count": int, "digest": str},        # chunks only
     "tensors": [{"name": str, "dtype": str, "shape": [int], "codec": str,
                  "slice": [start, stop],                            # chunks only
                  "pad": bin, "data": bin}, ...]}

``dtype`` is the tensor's logical dtype (what the model holds); ``codec`` says how ``data``
encodes it; ``pad`` (0 to 15 zero bytes, optional when reading) puts ``data`` at a
multiple of 16 bytes from the body's start. A message too large for one AMQP message
travels as chunks (:mod:`fedq.messages.chunks`): each chunk repeats the metadata, says
which of how many it is, and carries slices ``[start, stop)`` of the flattened tensors
(``shape`` stays the whole tensor's). Encoding writes the msgpack headers by hand and
joins them with each tensor's buffer, so a ``raw`` payload is copied exactly once.
Decoding is zero-copy: each tensor is an ``np.frombuffer`` view over the received body.

A compressed tensor's declared shape says how much memory decoding it takes (``topk``:
a few bytes can declare gigabytes of zeros), so a receiver that knows what it expects
passes the model's :data:`ModelSpec` and each tensor's name, shape and dtype are checked
against it before its codec runs. Without one, a shape is still refused above
:data:`MAX_ELEMENTS` values or with sizes whose product overflows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from fedq.messages.codecs import CodecError, TensorCodec, get_codec
from fedq.messages.codecs.buffers import element_count
from fedq.messages.msgpack_view import (
    MsgpackError,
    array_header,
    bin_header,
    map_header,
    pack,
    unpack_view,
)

Weights = dict[str, np.ndarray]
"""Named tensors in model order. Names are unique; order is the model's weight order."""

M = TypeVar("M", bound=BaseModel)

#: Every tensor's ``data`` starts at a multiple of this many bytes from the body's start
#: (a ``bytes`` body is itself 16-byte aligned): numpy runs ~1.5x faster on aligned views.
ALIGNMENT = 16
_TENSOR_KEYS = frozenset({"name", "dtype", "shape", "codec", "data"})
_PAD_KEY = pack("pad")
_DATA_KEY = pack("data")
_CHUNK_KEY = pack("chunk")
_TENSORS_KEY = pack("tensors")

_ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int32", "int64", "uint8", "uint32", "uint64"}
)


#: The most values one tensor may declare when the receiver has no spec to check it against
#: (16 GiB of float32).
MAX_ELEMENTS = 1 << 32


@dataclass(frozen=True, slots=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: np.dtype


#: What a receiver expects, by tensor name.
ModelSpec = Mapping[str, TensorSpec]


def spec_of(weights: Mapping[str, np.ndarray]) -> dict[str, TensorSpec]:
    return {name: TensorSpec(tuple(w.shape), w.dtype) for name, w in weights.items()}


class MalformedMessage(ValueError):
    """The body cannot be decoded into the expected message: machine reason + human text."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class WireTensor:
    """One tensor (or, in a chunk, one slice of it) as received: ``array`` is a read-only
    view over the message body, flat for a slice; ``payload`` is the encoded bytes."""

    name: str
    dtype: np.dtype
    #: The whole tensor's shape, also for a slice.
    shape: tuple[int, ...]
    codec: str
    array: np.ndarray
    payload: memoryview
    #: [start, stop) of the flattened tensor in a chunk; None for a whole tensor.
    slice: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """Which chunk of a message this is, and the digest of the chunks up to it
    (:func:`fedq.messages.chunks.carried_digests`): the last chunk's is the whole's."""

    index: int
    count: int
    digest: str


@dataclass(frozen=True, slots=True)
class DecodedMessage:
    fields: dict[str, Any]
    tensors: list[WireTensor]
    chunk: ChunkInfo | None = None

    def meta(self, model: type[M]) -> M:
        """Validate the metadata as ``model``; raises MalformedMessage(reason='schema')."""
        try:
            return model.model_validate(self.fields)
        except ValidationError as exc:
            raise MalformedMessage("schema", _first_error(exc)) from None

    def weights(self) -> Weights:
        return {t.name: t.array for t in self.tensors}


def _first_error(exc: ValidationError) -> str:
    """Where and what the first error is, as text. Apart from :meth:`DecodedMessage.meta`
    so that its frame, kept by the traceback of what it raises, holds no error details: a
    validator's error (``ctx``) holds its own traceback, which reaches that frame again, a
    cycle keeping every decoded field (50,000 metrics of a hostile body, say) until the
    garbage collector comes."""
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or 'body'}: {first['msg']}"


def encode_message(
    meta: BaseModel,
    tensors: Mapping[str, np.ndarray] | None = None,
    codec: str | TensorCodec = "raw",
) -> bytes:
    """Encode ``meta`` (and ``tensors`` with ``codec``) as one msgpack map. Each tensor
    records the codec's plain name (``topk`` for ``topk:0.05``): what decoding needs."""
    fields = meta.model_dump(mode="json")
    if tensors is None:
        return pack(fields)
    tensor_codec = get_codec(codec)
    encoded = [
        EncodedTensor(
            name, array.dtype, array.shape, tensor_codec.name, None, tensor_codec.encode(array)
        )
        for name, array in tensors.items()
    ]
    return encode_body(PackedFields.of(fields), encoded)


@dataclass(frozen=True, slots=True)
class EncodedTensor:
    """A tensor (or a slice of one) ready to go: its description and encoded payload."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    codec: str
    slice: tuple[int, int] | None
    payload: memoryview


@dataclass(frozen=True, slots=True)
class PackedFields:
    """A body's metadata fields, packed once: a chunked message's bodies all repeat them."""

    count: int
    entries: bytes

    @classmethod
    def of(cls, fields: Mapping[str, Any]) -> PackedFields:
        packed = pack(dict(fields))
        return cls(len(fields), packed[len(map_header(len(fields))) :])


@dataclass(frozen=True, slots=True)
class BodyLayout:
    """A body's parts in order, and where things land once they are joined: each tensor's
    payload, and the end of the ``chunk`` map (whose last entry is the carried digest)."""

    parts: list[bytes | memoryview]
    payloads: list[int]
    chunk_end: int | None


def lay_out_body(
    fields: PackedFields, tensors: list[EncodedTensor], chunk: ChunkInfo | None = None
) -> BodyLayout:
    """The parts of the msgpack body of ``fields`` plus ``tensors`` (and ``chunk``)."""
    parts: list[bytes | memoryview] = [
        map_header(fields.count + (chunk is not None) + 1),
        fields.entries,
    ]
    chunk_end = None
    if chunk is not None:
        described = {"index": chunk.index, "count": chunk.count, "digest": chunk.digest}
        parts += (_CHUNK_KEY, pack(described))
        chunk_end = sum(len(p) for p in parts)
    parts += (_TENSORS_KEY, array_header(len(tensors)))
    offset = sum(len(p) for p in parts)
    payloads = []
    for tensor in tensors:
        head = _tensor_head(tensor, offset, bin_header(tensor.payload.nbytes))
        parts += (head, tensor.payload)
        payloads.append(offset + len(head))
        offset += len(head) + tensor.payload.nbytes
    return BodyLayout(parts, payloads, chunk_end)


def encode_body(
    fields: PackedFields, tensors: list[EncodedTensor], chunk: ChunkInfo | None = None
) -> bytes:
    """The msgpack body of ``fields`` plus ``tensors`` (and ``chunk``), each payload
    copied once, straight into the joined body."""
    return b"".join(lay_out_body(fields, tensors, chunk).parts)


def _tensor_head(tensor: EncodedTensor, offset: int, data_header: bytes) -> bytes:
    """Everything of the tensor's map before the bytes of ``data``, for a map starting at
    ``offset`` in the body: a ``pad`` bin makes ``data`` start at a multiple of ALIGNMENT."""
    described: dict[str, Any] = {
        "name": tensor.name,
        "dtype": tensor.dtype.name,
        "shape": list(tensor.shape),
        "codec": tensor.codec,
    }
    if tensor.slice is not None:
        described["slice"] = list(tensor.slice)
    fields = pack(described)[1:]  # the entries without their fixmap header: + pad and data
    before_pad = 1 + len(fields) + len(_PAD_KEY) + 2  # + the pad's bin8 header
    after_pad = len(_DATA_KEY) + len(data_header)
    pad = -(offset + before_pad + after_pad) % ALIGNMENT
    entries = bytes([0x80 | (len(described) + 2)])
    return b"".join(
        (entries, fields, _PAD_KEY, bin_header(pad), bytes(pad), _DATA_KEY, data_header)
    )


def decode_message(
    body: bytes | bytearray | memoryview, spec: ModelSpec | None = None
) -> DecodedMessage:
    """Decode any fedq body without copying tensor bytes; raises MalformedMessage. With
    ``spec``, a tensor not in it or of another shape or dtype is refused before it is
    decoded (reasons ``tensor_mismatch``, ``shape_mismatch``, ``dtype_mismatch``)."""
    try:
        obj = unpack_view(body)
    except MsgpackError as exc:
        raise MalformedMessage("undecodable", str(exc)) from None
    if not isinstance(obj, dict):
        raise MalformedMessage("undecodable", f"body is a msgpack {type(obj).__name__}, not a map")
    chunk = _decode_chunk(obj.pop("chunk")) if "chunk" in obj else None
    raw_tensors = obj.pop("tensors", [])
    if not isinstance(raw_tensors, list):
        raise MalformedMessage("schema", "tensors must be a list")
    tensors: list[WireTensor] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw_tensors):
        tensor = _decode_tensor(i, entry, spec)
        if tensor.name in seen:
            raise MalformedMessage("schema", f"tensor {tensor.name!r} appears twice")
        if (tensor.slice is None) != (chunk is None):
            raise MalformedMessage(
                "schema", f"tensor {tensor.name!r}: slices go in chunks, and only slices"
            )
        seen.add(tensor.name)
        tensors.append(tensor)
    return DecodedMessage(fields=obj, tensors=tensors, chunk=chunk)


#: More chunks than this per message is refused: 256 GiB at the default 4 MiB.
MAX_CHUNKS = 1 << 16


def _decode_chunk(entry: Any) -> ChunkInfo:
    if not isinstance(entry, dict) or set(entry) != {"index", "count", "digest"}:
        raise MalformedMessage("schema", "chunk must have exactly index, count, digest")
    index, count, digest = entry["index"], entry["count"], entry["digest"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count)):
        raise MalformedMessage("schema", "chunk index and count must be integers")
    if not 0 <= index < count <= MAX_CHUNKS:
        raise MalformedMessage(
            "schema", f"chunk {index} of {count}: need 0 <= index < count <= {MAX_CHUNKS}"
        )
    if not isinstance(digest, str) or len(digest) != 32:
        raise MalformedMessage("schema", "chunk digest must be 32 hex characters")
    return ChunkInfo(index, count, digest)


def _decode_slice(name: str, entry: Any, shape: tuple[int, ...]) -> tuple[int, int]:
    if (
        not isinstance(entry, list)
        or len(entry) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in entry)
    ):
        raise MalformedMessage("schema", f"tensor {name!r}: slice must be [start, stop]")
    start, stop = entry
    size = element_count(shape)
    if not 0 <= start < stop <= size:
        raise MalformedMessage(
            "schema", f"tensor {name!r}: slice [{start}, {stop}) is not within its {size} values"
        )
    return start, stop


def _check_shape(name: str, dtype: str, shape: tuple[int, ...], spec: ModelSpec | None) -> None:
    """Before a tensor is decoded: is it what the receiver expects, and of a sane size?"""
    if spec is not None:
        want = spec.get(name)
        if want is None:
            raise MalformedMessage("tensor_mismatch", f"unexpected tensor {name!r}")
        if shape != want.shape:
            raise MalformedMessage(
                "shape_mismatch",
                f"tensor {name!r} has shape {list(shape)}, model has {list(want.shape)}",
            )
        if np.dtype(dtype) != want.dtype:
            raise MalformedMessage(
                "dtype_mismatch", f"tensor {name!r} is {dtype}, model has {want.dtype}"
            )
    count = 1
    for size in shape:  # Python ints: no overflow, and stops as soon as it is too many
        count *= size
        if count > MAX_ELEMENTS:
            raise MalformedMessage(
                "too_large", f"tensor {name!r}: shape {list(shape)[:8]} is too many values"
            )


def _decode_tensor(index: int, entry: Any, spec: ModelSpec | None) -> WireTensor:
    if not isinstance(entry, dict) or set(entry) - {"pad", "slice"} != _TENSOR_KEYS:
        raise MalformedMessage(
            "schema", f"tensor #{index} must have exactly name, dtype, shape, codec, data"
        )
    name, dtype, shape, codec, data = (
        entry["name"],
        entry["dtype"],
        entry["shape"],
        entry["codec"],
        entry["data"],
    )
    if not isinstance(name, str) or not isinstance(data, memoryview):
        raise MalformedMessage("schema", f"tensor #{index}: name must be str and data bin")
    if not isinstance(dtype, str) or dtype not in _ALLOWED_DTYPES:
        raise MalformedMessage("schema", f"tensor {name!r}: dtype {dtype!r} is not allowed")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise MalformedMessage("schema", f"tensor {name!r}: shape must be a list of sizes")
    whole = tuple(shape)
    _check_shape(name, dtype, whole, spec)
    part = _decode_slice(name, entry["slice"], whole) if "slice" in entry else None
    try:
        array = get_codec(str(codec)).decode(
            data, np.dtype(dtype), whole if part is None else (part[1] - part[0],)
        )
    except CodecError as exc:
        raise MalformedMessage("undecodable", f"tensor {name!r}: {exc}") from None
    return WireTensor(name, np.dtype(dtype), whole, str(codec), array, data, part)
