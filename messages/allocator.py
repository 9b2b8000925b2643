"""Keep glibc from serving every large message buffer with a fresh ``mmap``.

Above the mmap threshold (dynamic, at most 32 MiB by default) glibc maps each new
allocation and unmaps it on free, so every 40 MB update body is a new mapping whose pages
fault in one by one: measured here, encoding a 40 MB update ran at 2.6 GB/s against 21 GB/s
with the threshold raised (``python bench/codec.py``). Raising the mmap and trim thresholds
lets freed bodies be reused from the heap. Process-wide, so the CLI calls it once at start.
``FEDQ_MALLOC_TUNING=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Above every message body (chunks are at most 16 MiB by default, 120 MiB at most), below
#: a large model's tensors: bodies are reused from the heap, while model-sized arrays are
#: mapped and handed back to the system when freed (at 512 MiB, freed model-sized arrays
#: stayed in a fragmented heap: 8x a 100 MB model at the coordinator's peak, against
#: about 3x at 64 MiB; ``python bench/large_model.py``).
_THRESHOLD = int(os.environ.get("FEDQ_MALLOC_THRESHOLD_MB", "64")) << 20


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
        mallopt(_M_TRIM_THRESHOLD, int(os.environ.get("FEDQ_TRIM_MB", str(2 * (_THRESHOLD >> 20)))) << 20)
    )
