"""Buffer helpers shared by the codecs: exact-size zero-copy views and little-endian payloads."""

from __future__ import annotations

import numpy as np


class CodecError(ValueError):
    """A tensor's bytes do not match what its codec, dtype and shape promise."""


def element_count(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def view_as(data: memoryview, wire_dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-copy array of ``shape`` over ``data``, checking the byte count first."""
    count = element_count(shape)
    if len(data) != count * wire_dtype.itemsize:
        raise CodecError(
            f"payload has {len(data)} bytes, shape {list(shape)} of {wire_dtype} needs "
            f"{count * wire_dtype.itemsize}"
        )
    return np.frombuffer(data, dtype=wire_dtype, count=count).reshape(shape)


def as_le_bytes(array: np.ndarray, dtype: np.dtype) -> memoryview:
    """``array`` as contiguous little-endian ``dtype`` bytes; copies only when it must."""
    out = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<"))
    return out.reshape(-1).view(np.uint8).data
