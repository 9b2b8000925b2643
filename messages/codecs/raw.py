"""``raw``: the tensor's own dtype, little-endian, byte for byte. Lossless."""

from __future__ import annotations

import numpy as np

from fedq.messages.codecs.buffers import as_le_bytes, view_as


class RawCodec:
    name = "raw"

    def encode(self, array: np.ndarray) -> memoryview:

        return as_le_bytes(array, array.dtype)

    def decode(self, data: memoryview, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:

        return view_as(data, dtype.newbyteorder("<"), shape)
