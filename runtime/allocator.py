"""Set glibc's mmap and trim thresholds for fedq's two kinds of large buffers, and one
heap for all threads.

Above the mmap threshold glibc maps each new allocation and unmaps it on free, so every
message body above it is a new mapping whose pages fault in one by one, several times
slower to fill than a buffer reused from the heap. Below it, freed buffers stay in the
heap, where model-sized arrays freed and made again each version fragment it: the process
keeps their memory. fedq's message bodies are chunks (4 MiB of tensor bytes by default),
so a fixed threshold just above a chunk serves bodies from the heap and maps the model's
large tensors (the figures: bench/README.md, "Chunk size and malloc thresholds"). A
participant, which makes the same model-sized arrays every round and has no coordinator's
bound to keep, serves those from the heap too (:func:`keep_model_buffers`).
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


#: A participant's thresholds (:func:`keep_model_buffers`): tensors of up to 64 MiB come
#: from the heap, and up to 128 MiB freed at its top stay there for the next round.
_PARTICIPANT_THRESHOLD = 64 << 20
_PARTICIPANT_TRIM_THRESHOLD = 128 << 20


def tune_malloc_for_large_buffers() -> bool:
    """Raise glibc's mmap/trim thresholds and keep one heap; True if applied. No-op off
    glibc or when disabled. Call it before any thread starts: threads that have a heap of
    their own keep it."""
    return _mallopt(
        (_M_MMAP_THRESHOLD, _THRESHOLD),
        (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        (_M_ARENA_MAX, _ARENA_MAX),
    )


def keep_model_buffers() -> bool:
    """For a participant process: serve model-sized arrays from the heap, and keep them
    there between rounds; True if applied. No-op off glibc or when disabled.

    Why. A participant makes the same arrays every round: the model it assembles, the
    local weights its app returns. Mapped fresh (above the coordinator's threshold), each
    page of them faults in zeroed, and is handed back when freed: at P = 10M, a 40 MB
    copy into fresh arrays took 6.2 to 8.2 ms here against 1.7 to 2.2 ms into arrays
    reused. From the heap, the next round's arrays take the pages of the last round's.
    Measured (bench/README.md, "Where a round's time goes"): the participants' CPU a round
    at P = 10M with 10 participants 0.92 to 0.93 s against 1.02 to 1.04 s, and a
    participant's peak 4.95x the model against 4.74x, under its bound of 70 MiB + 4x the
    model. The coordinator keeps the lower threshold: its bound is tighter, and model-sized
    arrays made and freed in its heap fragmented it (bench/README.md, "Chunk size and
    malloc thresholds"). Tensors above 64 MiB are still mapped. Thresholds may change at
    any time, so the participant command calls this after :func:`tune_malloc_for_large_buffers`."""
    return _mallopt(
        (_M_MMAP_THRESHOLD, _PARTICIPANT_THRESHOLD),
        (_M_TRIM_THRESHOLD, _PARTICIPANT_TRIM_THRESHOLD),
    )


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Apply every (option, value) with glibc's ``mallopt``; True if each was taken."""
    if os.environ.get("FEDQ_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return False
    taken = [bool(mallopt(option, value)) for option, value in settings]  # each, always
    return all(taken)
