"""``int8``: floating tensors travel as 8-bit integers with one float32 scale per block.

The flat (C-order) values are cut into blocks of :data:`BLOCK` values, the last one
possibly shorter. Each block's scale is ``max|x| / 127`` and each value travels as
``round(x / scale)`` in [-127, 127], so a decoded value is within ``scale / 2`` of the
original (plus float32 rounding). Payload, little-endian::

    [n_blocks x float32 scale][n x int8 value]      n_blocks = ceil(n / BLOCK)

That is ``n + 4 * ceil(n / BLOCK)`` bytes against ``4 n`` for raw float32: ~3.99x fewer.
A NaN or infinity in a block makes its scale non-finite, which decoding rejects. Non-float
tensors travel raw. Decoding allocates a dense, read-only float32 array of the tensor's
shape (the coordinator folds dense deltas): unlike ``raw`` and ``fp16`` it cannot be a view.
"""

from __future__ import annotations

import numpy as np

from fedq.messages.codecs.buffers import CodecError, as_le_bytes, element_count, view_as

#: Values per scale. Fixed, not a setting: the decoder derives the layout from it.
BLOCK = 4096
_SCALE = np.dtype("<f4")


def payload_size(count: int) -> int:
    return count + _SCALE.itemsize * -(-count // BLOCK)


def _quantize(blocks: np.ndarray, scales: np.ndarray, values: np.ndarray) -> None:
    """Fill ``scales`` (one per row of ``blocks``) and the int8 ``values``, in place."""
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf: a non-finite scale
        np.divide(np.abs(blocks).max(axis=1), np.float32(127), out=scales)
        usable = (scales > 0) & np.isfinite(scales)
        safe = np.where(usable, scales, np.float32(1))[:, None]
        quantized = np.clip(np.rint(blocks / safe), -127, 127)
        quantized[~usable] = 0  # all zeros, or refused anyway for its scale
        values[...] = quantized


class Int8Codec:
    name = "int8"

    def encode(self, array: np.ndarray) -> memoryview:

        if not np.issubdtype(array.dtype, np.floating):
            return as_le_bytes(array, array.dtype)
        flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
        count = flat.size
        blocks = -(-count // BLOCK)
        out = np.empty(payload_size(count), dtype=np.uint8)
        scales = out[: blocks * _SCALE.itemsize].view(_SCALE)
        values = out[blocks * _SCALE.itemsize :].view(np.int8)
        full = count // BLOCK
        _quantize(
            flat[: full * BLOCK].reshape(full, BLOCK),
            scales[:full],
            values[: full * BLOCK].reshape(full, BLOCK),
        )
        if full < blocks:
            _quantize(flat[full * BLOCK :][None], scales[full:], values[full * BLOCK :][None])
        return out.data

    def decode(self, data: memoryview, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:

        if not np.issubdtype(dtype, np.floating):
            return view_as(data, dtype.newbyteorder("<"), shape)
        count = element_count(shape)
        if len(data) != payload_size(count):
            raise CodecError(
                f"int8 payload has {len(data)} bytes, shape {list(shape)} needs "
                f"{payload_size(count)}"
            )
        blocks = -(-count // BLOCK)
        scales = np.frombuffer(data, dtype=_SCALE, count=blocks)
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise CodecError("int8 payload has a non-finite or negative scale")
        values = np.frombuffer(data, dtype=np.int8, count=count, offset=blocks * _SCALE.itemsize)
        out = np.empty(count, dtype=np.float32)
        full = count // BLOCK
        with np.errstate(over="ignore"):  # 127 x a huge scale is inf: the intake refuses it
            np.multiply(
                values[: full * BLOCK].reshape(full, BLOCK),
                scales[:full, None],
                out=out[: full * BLOCK].reshape(full, BLOCK),
            )
            if full < blocks:
                np.multiply(values[full * BLOCK :], scales[full], out=out[full * BLOCK :])
        out.flags.writeable = False
        return out.reshape(shape)
