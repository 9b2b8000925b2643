"""A msgpack reader that returns ``bin`` values as memoryviews into the body (zero-copy).

``msgpack.unpackb`` copies every ``bin`` value into a fresh ``bytes`` object, which for a
40 MB update is a 40 MB copy (and a page-faulting allocation) we do not need: tensors are
read with ``np.frombuffer`` straight over the received body. Everything else (maps, arrays,
strings, numbers) decodes to the same Python values as ``msgpack.unpackb(raw=False)``;
ext types are refused because fedq never writes them.

Invariant: a returned memoryview aliases ``body``; the caller must keep ``body`` alive
(a memoryview does so by itself) and must not mutate it.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

_MAX_DEPTH = 32

#: What decoding may allocate beyond the decode budget's share of the body (see
#: :class:`DecodeBudget`): room for a whole honest message of small tensors.
BUDGET_ALLOWANCE = 1 << 20
#: Bytes of Python objects a decoded message may take per byte of its body.
BUDGET_PER_BYTE = 8
#: What each kind of object costs against the budget, in bytes: about what CPython
#: allocates for it (a container also pays for each of its slots; small ints, ``None``
#: and booleans are shared objects and cost nothing).
_CONTAINER_COST = 64
_SLOT_COST = 8
_STR_COST = 50
_BIN_COST = 200
_NUMBER_COST = 32


class MsgpackError(ValueError):
    """The body is not valid msgpack of the kinds fedq writes."""


_FIXED: dict[int, tuple[str, int]] = {
    0xCA: (">f", 4),
    0xCB: (">d", 8),
    0xCC: (">B", 1),
    0xCD: (">H", 2),
    0xCE: (">I", 4),
    0xCF: (">Q", 8),
    0xD0: (">b", 1),
    0xD1: (">h", 2),
    0xD2: (">i", 4),
    0xD3: (">q", 8),
}
_LENGTH: dict[int, tuple[str, int]] = {
    0xC4: (">B", 1),
    0xC5: (">H", 2),
    0xC6: (">I", 4),
    0xD9: (">B", 1),
    0xDA: (">H", 2),
    0xDB: (">I", 4),
    0xDC: (">H", 2),
    0xDD: (">I", 4),
    0xDE: (">H", 2),
    0xDF: (">I", 4),
}


class _Reader:
    """Reads one body, charging what it builds to a budget: a document of nested empty
    containers costs one byte on the wire per container and some 64 in memory, so without
    a budget a 40 MB body could take gigabytes. With it, decoding takes at most
    ``BUDGET_ALLOWANCE + BUDGET_PER_BYTE x len(body)`` bytes, whatever the document."""

    __slots__ = ("buf", "left", "pos")

    def __init__(self, body: bytes | bytearray | memoryview) -> None:
        view = memoryview(body)
        self.buf = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        self.pos = 0
        self.left = BUDGET_ALLOWANCE + BUDGET_PER_BYTE * len(self.buf)

    def _charge(self, cost: int) -> None:
        self.left -= cost
        if self.left < 0:
            raise MsgpackError(
                "decoding would take more memory than a message of this length may "
                f"({BUDGET_PER_BYTE} bytes a byte, plus {BUDGET_ALLOWANCE})"
            )

    def _take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise MsgpackError(f"truncated body: need {n} bytes at offset {self.pos}")
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def _unpack(self, fmt: str, size: int) -> Any:
        return struct.unpack(fmt, self._take(size))[0]

    def read(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise MsgpackError("nesting deeper than fedq ever writes")
        b = self._take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0xA0 <= b <= 0xBF:
            return self._str(b & 0x1F)
        if 0x90 <= b <= 0x9F:
            return self._array(b & 0x0F, depth)
        if 0x80 <= b <= 0x8F:
            return self._map(b & 0x0F, depth)
        if b == 0xC0:
            return None
        if b == 0xC2:
            return False
        if b == 0xC3:
            return True
        if b in _FIXED:
            self._charge(_NUMBER_COST)
            return self._unpack(*_FIXED[b])
        if b in _LENGTH:
            n = self._unpack(*_LENGTH[b])
            if b <= 0xC6:
                self._charge(_BIN_COST)
                return self._take(n)
            if b <= 0xDB:
                return self._str(n)
            if b <= 0xDD:
                return self._array(n, depth)
            return self._map(n, depth)
        raise MsgpackError(f"unsupported msgpack type byte 0x{b:02x} at offset {self.pos - 1}")

    def _str(self, n: int) -> str:
        self._charge(_STR_COST + n)
        try:
            return str(self._take(n), "utf-8")
        except UnicodeDecodeError as exc:
            raise MsgpackError(f"invalid utf-8 string: {exc}") from None

    def _array(self, n: int, depth: int) -> list[Any]:
        self._charge(_CONTAINER_COST + _SLOT_COST * n)
        return [self.read(depth + 1) for _ in range(n)]

    def _map(self, n: int, depth: int) -> dict[Any, Any]:
        self._charge(_CONTAINER_COST + 2 * _SLOT_COST * n)
        out: dict[Any, Any] = {}
        for _ in range(n):
            key = self.read(depth + 1)
            if isinstance(key, (list, dict, memoryview)):
                raise MsgpackError("unhashable map key")
            out[key] = self.read(depth + 1)
        return out


def unpack_view(body: bytes | bytearray | memoryview) -> Any:
    """Decode one msgpack object that spans all of ``body``; ``bin`` values stay memoryviews."""
    reader = _Reader(body)
    obj = reader.read()
    if reader.pos != len(reader.buf):
        raise MsgpackError(f"{len(reader.buf) - reader.pos} trailing bytes after the message")
    return obj


def map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    if n < 1 << 16:
        return b"\xde" + struct.pack(">H", n)
    return b"\xdf" + struct.pack(">I", n)


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return b"\xc4" + struct.pack(">B", n)
    if n < 1 << 16:
        return b"\xc5" + struct.pack(">H", n)
    if n < 1 << 32:
        return b"\xc6" + struct.pack(">I", n)
    raise MsgpackError("a bin value is limited to 4 GiB")


def pack(obj: Any) -> bytes:
    """``msgpack.packb`` with ``bin`` for bytes (msgpack's own function is untyped)."""
    return bytes(msgpack.packb(obj, use_bin_type=True))
