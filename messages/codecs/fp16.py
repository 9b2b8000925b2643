"""``fp16``: floating tensors travel as IEEE half precision, halving the bytes.

Relative error is at most 2**-11 per value within float16's range; values beyond +-65504
become inf and are then rejected by validation, so clip deltas first if they can be that
large. Non-float tensors travel raw. Decoding yields float16 views; consumers upcast.
"""

from __future__ import annotations

import numpy as np

from fedq.messages.codecs.buffers import as_le_bytes, view_as

_HALF = np.dtype("<f2")


class Fp16Codec:
    name = "fp16"

    def encode(self, array: np.ndarray) -> memoryview:

        wire = _HALF if np.issubdtype(array.dtype, np.floating) else array.dtype
        return as_le_bytes(array, wire)

    def decode(self, data: memoryview, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:

        wire = _HALF if np.issubdtype(dtype, np.floating) else dtype.newbyteorder("<")
        return view_as(data, wire, shape)
