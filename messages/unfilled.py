"""Bytes objects filled after they are made: a message body received straight into the
``bytes`` that aiormq and aio-pika take, with no copy to make it ``bytes`` at the end; a
chunk's body whose digest is written in once its payloads are hashed from it.

They take only ``bytes`` (aio-pika's ``Message`` copies anything else), and a ``bytes``
object cannot be written to from Python. The C API has a way for data still to come:
``PyBytes_FromStringAndSize(NULL, size)`` makes the object unfilled, and its maker fills
it before anyone else sees it. :func:`unfilled_bytes` does that through ctypes. What must
stay true: the object is its maker's alone until filled (nobody has hashed or seen it),
so filling it changes nothing anyone saw; it is never written to once handed over.
Where CPython's layout is not there (:data:`FILLS_BYTES` is False), a maker fills a
buffer and copies it out.
"""

from __future__ import annotations

import ctypes

import numpy as np

_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
#: Where a bytes object's own bytes start: past its header (CPython's ``ob_sval``).
_BYTES_DATA = bytes.__basicsize__ - 1


def unfilled_bytes(size: int) -> tuple[bytes, np.ndarray]:
    """A new bytes object of ``size`` (> 1) bytes not yet filled, and a writable uint8
    view of its bytes, which keeps it alive. Sizes 0 and 1 may be shared objects."""
    assert size > 1, "a fresh object, not a shared one"
    made = _new_bytes(None, size)
    return made, writable_view(made)


def writable_view(made: bytes) -> np.ndarray:
    """A writable uint8 view of the bytes of ``made``, which keeps it alive: only for an
    object its maker alone holds, not yet hashed nor handed over (a fresh one, of more than
    one byte: shorter ones may be shared)."""
    storage = (ctypes.c_char * len(made)).from_address(id(made) + _BYTES_DATA)
    storage._made = made  # type: ignore[attr-defined]  # the view keeps the object alive
    return np.frombuffer(memoryview(storage), dtype=np.uint8)


def _fills_bytes() -> bool:
    """Whether :func:`unfilled_bytes` fills what it says it does on this interpreter."""
    try:
        made, view = unfilled_bytes(16)
        view[:] = np.arange(16, dtype=np.uint8)
    except (AttributeError, ValueError, TypeError):
        return False
    return made == bytes(range(16))


#: False off CPython's layout: makers then fill a buffer and copy it out.
FILLS_BYTES = _fills_bytes()
