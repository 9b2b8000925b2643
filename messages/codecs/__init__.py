"""Tensor codecs: how one tensor's values become the ``data`` bytes of a message.

A codec is one small file with a class satisfying :class:`TensorCodec`; register it in
``CODECS``. Decoding always follows the ``codec`` field recorded on each tensor, never the
federation's setting, so a coordinator can read any mix of codecs.

A codec is stateless: whatever must persist across rounds (the residual of a lossy codec's
error feedback) belongs to the participant (:mod:`fedq.participant.compression`). A codec
with a setting takes it after a colon (``topk:0.05``); the setting is the encoder's only and
never needed to decode, so every tensor records the codec's plain ``name`` (``topk``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from fedq.messages.codecs.buffers import CodecError
from fedq.messages.codecs.fp16 import Fp16Codec
from fedq.messages.codecs.int8 import Int8Codec
from fedq.messages.codecs.raw import RawCodec
from fedq.messages.codecs.topk import TopKCodec


class TensorCodec(Protocol):
    #: What each tensor's ``codec`` field records and decoding looks up.
    name: str

    def encode(self, array: np.ndarray) -> memoryview:
        """Return the payload as a C-contiguous little-endian buffer (no copy if possible)."""
        ...

    def decode(self, data: memoryview, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """Return a read-only array over ``data`` (zero-copy); may differ from ``dtype``."""
        ...


CODECS: dict[str, TensorCodec] = {
    c.name: c for c in (RawCodec(), Fp16Codec(), Int8Codec(), TopKCodec())
}
#: Codecs that take a setting after a colon: name -> parser of the setting.
_PARAMETERIZED: dict[str, Callable[[str], TensorCodec]] = {"topk": TopKCodec.parse}
#: Codecs whose decoded values are exactly the encoded ones: no error feedback needed.
LOSSLESS = frozenset({"raw"})


def get_codec(name: str | TensorCodec) -> TensorCodec:
    """The codec called ``name``, or ``name:setting`` for a codec that takes one; a codec
    object is its own answer (a sender may build one the registry has no name for)."""
    if not isinstance(name, str):
        return name
    base, colon, argument = name.partition(":")
    if colon and base in _PARAMETERIZED:
        return _PARAMETERIZED[base](argument)
    try:
        return CODECS[name]
    except KeyError:
        known = [*CODECS, *(f"{n}:<setting>" for n in _PARAMETERIZED)]
        raise CodecError(f"unknown codec {name!r}; known: {', '.join(known)}") from None


__all__ = ["CODECS", "LOSSLESS", "CodecError", "TensorCodec", "get_codec"]
