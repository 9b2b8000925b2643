"""glibc's malloc as fedq tunes it (``runtime/allocator.py``): every thread allocates from
one heap, so what a worker thread frees is not kept in a heap of its own. Checked in fresh
processes, from glibc's own account of its heaps (``malloc_stats``), against an untuned
process, where the same threads get heaps of their own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.processes

#: Four threads allocating at once (a barrier holds them together), then glibc's account
#: of its heaps ("Arena N:" each) on stderr. argv[1] == "tuned": fedq's tuning first.
THREADS_ALLOCATE = """
import ctypes, sys, threading
if sys.argv[1] == "tuned":
    from fedq.runtime.tuning import tune_process
    assert tune_process()
together = threading.Barrier(4)
def allocate():
    together.wait()
    kept = [bytearray(1 << 16) for _ in range(256)]
    together.wait()
threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ctypes.CDLL("libc.so.6").malloc_stats()
"""


def _heaps(how: str) -> int:
    """Heaps glibc made, in an environment that sets no limit of its own on them."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "FEDQ_MALLOC_TUNING")
    }
    run = subprocess.run(
        [sys.executable, "-c", THREADS_ALLOCATE, how],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return run.stderr.count("Arena ")


def test_threads_share_one_heap_once_tuned():
    assert _heaps("untuned") > 1  # what the tuning changes: else this test shows nothing
    assert _heaps("tuned") == 1
