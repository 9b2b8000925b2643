"""Tensor codecs: how one tensor's values become the ``data`` bytes of a message.

A codec is one small file with a class satisfying :class:`TensorCodec`; register it in
``CODECS``. Decoding always follows the ``codec`` field recorded on each tensor, never the
federation's setting, so a coordinator can read any mix of codecs.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedq.messages.codecs.buffers import CodecError
from fedq.messages.codecs.fp16 import Fp16Codec
from fedq.messages.codecs.raw import RawCodec


class TensorCodec(Protocol):
    name: str

    def encode(self, array: np.ndarray) -> memoryview:
        """Return the payload as a C-contiguous little-endian buffer (no copy if possible)."""
        ...

    def decode(self, data: memoryview, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """Return a read-only array over ``data`` (zero-copy); may differ from ``dtype``."""
        ...


CODECS: dict[str, TensorCodec] = {c.name: c for c in (RawCodec(), Fp16Codec())}


def get_codec(name: str) -> TensorCodec:
    try:
        return CODECS[name]
    except KeyError:
        raise CodecError(f"unknown codec {name!r}; known: {', '.join(CODECS)}") from None


__all__ = ["CODECS", "CodecError", "TensorCodec", "get_codec"]
