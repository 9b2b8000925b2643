"""What every fedq process sets up at start, before it moves any model.

Two process-wide settings, each explained in its own module: glibc's malloc thresholds,
so that chunk bodies and scratch come from the heap instead of fresh pages
(:mod:`fedq.runtime.allocator`), and one BLAS thread, so that a ``dot`` per chunk does not
keep a spare thread spinning on cores the participants and the broker need
(:mod:`fedq.runtime.blas_threads`). The CLI calls :func:`tune_process` once; so do the
benchmarks, whose processes stand for fedq's. A Python program calling fedq's API keeps
its own settings unless it calls it too.
"""

from __future__ import annotations

from fedq.runtime.allocator import tune_malloc_for_large_buffers
from fedq.runtime.blas_threads import limit_blas_threads


def tune_process() -> bool:
    """Tune malloc and limit BLAS threads (each unless the user's environment says
    otherwise); returns whether malloc was tuned, which benchmarks report."""
    tuned = tune_malloc_for_large_buffers()
    limit_blas_threads()
    return tuned
