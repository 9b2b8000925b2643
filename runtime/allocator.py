"""Set glibc's mmap and trim thresholds for fedq's two kinds of large buffers.

Above the mmap threshold glibc maps each new allocation and unmaps it on free, so every
message body above it is a new mapping whose pages fault in one by one: measured here,
encoding a 40 MB update ran at 2.6 GB/s against 21 GB/s from the heap
(``python bench/codec.py``). Below it, freed buffers stay in the heap, where model-sized
arrays freed and made again each version fragment it: the process keeps their memory.
fedq's message bodies are chunks (4 MiB of tensor bytes by default), so a fixed threshold
just above a chunk serves bodies from the heap and maps the model's large tensors.
Process-wide, so the CLI calls it once at start. ``FEDQ_MALLOC_TUNING=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Above a chunk's body (4 MiB of tensor bytes by default, plus metadata), so bodies are
#: reused from the heap at full speed; below a large model's tensors, which are mapped and
#: handed back to the system when freed instead of fragmenting the heap. Measured with
#: ``python bench/large_model.py --params 10000000 --participants 10 --rounds 5`` (40 MB
#: model): the coordinator's peak RSS was 342 MiB at 64 MiB thresholds and 16 MiB chunks,
#: 222 MiB at these values and 4 MiB chunks.
_THRESHOLD = 8 << 20
_TRIM_THRESHOLD = 8 << 20


def tune_malloc_for_large_buffers() -> bool:
    """Raise glibc's mmap/trim thresholds; True if applied. No-op off glibc or when disabled."""
    if os.environ.get("FEDQ_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
