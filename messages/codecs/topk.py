"""``topk``: a floating tensor travels as its k largest-magnitude entries, the rest as zero.

k is ``fraction`` of the tensor's values (rounded, at least 1 for a non-empty tensor), or
with ``fraction=None`` the tensor's nonzero entries: a sender that chose the entries itself
(the participant picks the largest across the whole update, see
:mod:`fedq.participant.compression`) zeroes the rest and sends what is left. k travels in
the payload, so decoding needs no setting and the wire ``codec`` field is just
``topk`` whatever the fraction. Payload, little-endian::

    [uint32 k][k x uint32 flat index, strictly increasing][k x float32 value]

That is ``4 + 8 k`` bytes against ``4 n`` for raw float32: ~50x fewer at 1%. Decoding
refuses a payload whose length does not match k, a k beyond the tensor's size, and indices
out of range or not strictly increasing (so never two values for one entry); finite values
are the intake's check, as for every codec. Tensors of 2**32 values or more cannot be
indexed and are refused when encoding. Non-float tensors travel raw. Decoding allocates a
dense, read-only float32 array of the tensor's shape, zero except at the k indices.

Dropping all but k entries is a large, biased error per round: pair it with error feedback
(:class:`fedq.participant.compression.ErrorFeedback`), which the participant applies.
"""

from __future__ import annotations

import numpy as np

from fedq.messages.codecs.buffers import CodecError, as_le_bytes, element_count, view_as

_COUNT = np.dtype("<u4")
_INDEX = np.dtype("<u4")
_VALUE = np.dtype("<f4")
#: The fraction behind the registry's plain ``topk``.
DEFAULT_FRACTION = 0.01


class TopKCodec:
    name = "topk"

    def __init__(self, fraction: float | None = DEFAULT_FRACTION) -> None:
        if fraction is not None and not 0 < fraction <= 1:
            raise CodecError(f"topk fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def k_for(self, count: int) -> int:
        """Entries kept of a tensor (or an update) of ``count`` values."""
        if self.fraction is None:
            raise ValueError("a topk codec of the nonzero entries has no fixed k")
        return min(count, max(1, round(self.fraction * count)))

    def encode(self, array: np.ndarray) -> memoryview:

        if not np.issubdtype(array.dtype, np.floating):
            return as_le_bytes(array, array.dtype)
        flat = np.ascontiguousarray(array).reshape(-1)
        count = flat.size
        if count > np.iinfo(_INDEX).max:
            raise CodecError(f"topk cannot index a tensor of {count} values (limit 2**32 - 1)")
        if self.fraction is None:
            indices = np.flatnonzero(flat).astype(_INDEX)  # NaN is nonzero: the intake refuses it
            k = indices.size
        elif (k := self.k_for(count)) == count:
            indices = np.arange(count, dtype=_INDEX)
        else:  # NaN sorts as largest: it is sent, and the intake refuses it
            indices = np.argpartition(np.abs(flat), count - k)[count - k :].astype(_INDEX)
            indices.sort()
        out = np.empty(_COUNT.itemsize + k * (_INDEX.itemsize + _VALUE.itemsize), np.uint8)
        values_at = _COUNT.itemsize + k * _INDEX.itemsize
        out[: _COUNT.itemsize] = np.array([k], dtype=_COUNT).view(np.uint8)
        out[_COUNT.itemsize : values_at] = indices.view(np.uint8)
        out[values_at:] = flat[indices].astype(_VALUE).view(np.uint8)
        return out.data

    def decode(self, data: memoryview, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:

        if not np.issubdtype(dtype, np.floating):
            return view_as(data, dtype.newbyteorder("<"), shape)
        count = element_count(shape)
        if len(data) < _COUNT.itemsize:
            raise CodecError(f"topk payload has {len(data)} bytes, too few for its k")
        k = int(np.frombuffer(data, dtype=_COUNT, count=1)[0])
        if k > count:
            raise CodecError(f"topk k={k} exceeds the tensor's {count} values")
        need = _COUNT.itemsize + k * (_INDEX.itemsize + _VALUE.itemsize)
        if len(data) != need:
            raise CodecError(f"topk payload has {len(data)} bytes, k={k} needs {need}")
        indices = np.frombuffer(data, dtype=_INDEX, count=k, offset=_COUNT.itemsize)
        values = np.frombuffer(
            data, dtype=_VALUE, count=k, offset=_COUNT.itemsize + k * _INDEX.itemsize
        )
        if k and int(indices.max()) >= count:
            raise CodecError(f"topk index {int(indices.max())} out of range for {count} values")
        if k > 1 and not (indices[1:] > indices[:-1]).all():
            raise CodecError("topk indices not unique and sorted (must strictly increase)")
        out = np.zeros(count, dtype=np.float32)
        out[indices] = values
        out.flags.writeable = False
        return out.reshape(shape)

    @classmethod
    def parse(cls, argument: str) -> TopKCodec:
        """``topk:<fraction>``, e.g. ``topk:0.05``: 5% of the entries."""
        try:
            fraction = float(argument)
        except ValueError:
            raise CodecError(f"topk fraction must be a number, got {argument!r}") from None
        return cls(fraction)
