"""One BLAS thread per fedq process, unless the user's environment says otherwise.

numpy's OpenBLAS starts a thread per core at import and, after every call it splits among
them, keeps them spinning for more work before they sleep. fedq calls BLAS on every chunk
it checks (the sum of squares of an update's values is a ``dot``), a few hundred calls a
round, so those threads never slept: at P = 10M on 2 cores, one of them burnt 47% of the
coordinator's CPU, about 2.0 of its 4.2 CPU seconds a round, on cores the participants and
the broker needed (bench/README.md, "Where a round's time goes"). fedq's parallelism is
its own (the event loop, worker threads, processes), and a ``dot`` of a chunk gains
nothing from a second thread, so each fedq process asks for one.

Process-wide, so the CLI calls it once at start (:mod:`fedq.runtime.tuning`), as it tunes malloc
(:mod:`fedq.runtime.allocator`); a Python program calling fedq's API keeps its own
settings. A user who set ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS`` or
``MKL_NUM_THREADS`` keeps what they set.
"""

from __future__ import annotations

import os

#: Variables by which a user chooses BLAS threads: when one is set, fedq leaves them be.
USER_CHOICES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads() -> bool:
    """Limit the BLAS libraries loaded so far to one thread; True if limited, False when
    the user chose a number themselves."""
    if any(os.environ.get(name) for name in USER_CHOICES):
        return False
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    return True
