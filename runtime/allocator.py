"""Set glibc's mmap and trim thresholds for fedq's two kinds of large buffers, and one
heap for all threads.

Above the mmap threshold glibc maps each new allocation and unmaps it on free, so every
message body above it is a new mapping whose pages fault in one by one, several times
slower to fill than a buffer reused from the heap. Below it, freed buffers stay in the
heap, where model-sized arrays freed and made again each version fragment it: the process
keeps their memory. fedq's message bodies are chunks (4 MiB of tensor bytes by default),
so a fixed threshold just above a chunk serves bodies from the heap and maps the model's
large tensors (the figures: bench/README.md, "Chunk size and malloc thresholds").
Process-wide, so the CLI calls it once at start (:mod:`fedq.runtime.tuning`).
``FEDQ_MALLOC_TUNING=0`` turns it off: a process-level switch, read here and nowhere on
the wire.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Above a chunk's body (the default chunk size, 4 MiB of tensor bytes, plus metadata), so
#: bodies are reused from the heap at full speed; below a large model's tensors, which are
#: mapped and handed back to the system when freed instead of fragmenting the heap. Keep it
#: above ``fedq.messages.chunks.DEFAULT_CHUNK_BYTES``.
_THRESHOLD = 8 << 20
#: Room for two chunk bodies freed at the top of the heap before glibc gives pages back: a
#: sender holds the body it publishes while it encodes the next, and with room for only
#: one, every other body came from pages given back and faulted in again (4,000 page
#: faults per 40 MB update encoded; bench/README.md, "Chunk size and malloc thresholds").
_TRIM_THRESHOLD = 16 << 20
#: One heap for every thread. glibc gives threads heaps of their own (up to 8 per core),
#: and each keeps what was freed in it: a chunk body made in a worker thread (an encoder's,
#: a spool read's) and freed in the event loop goes back to its thread's heap. With one per
#: thread, the coordinator at 10M parameters held 40 to 60 MiB freed in its heaps and
#: peaked at 195 to 207 MiB; with one heap, 177 to 201 MiB, and the round took no longer
#: (bench/README.md, "Where a round's time goes", 2026-12-07 on an AMD EPYC). The threads
#: mostly wait for the GIL anyway, so sharing one heap's lock costs little.
_ARENA_MAX = 1


def tune_malloc_for_large_buffers() -> bool:
    """Raise glibc's mmap/trim thresholds and keep one heap; True if applied. No-op off
    glibc or when disabled. Call it before any thread starts: threads that have a heap of
    their own keep it."""
    if os.environ.get("FEDQ_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return False
    return all(
        bool(mallopt(option, value))
        for option, value in (
            (_M_MMAP_THRESHOLD, _THRESHOLD),
            (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
            (_M_ARENA_MAX, _ARENA_MAX),
        )
    )
