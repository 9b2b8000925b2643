"""glibc's malloc as fedq tunes it (``runtime/allocator.py``): every thread allocates from
one heap, so what a worker thread frees is not kept in a heap of its own; and a
participant's model-sized arrays come from the heap, so each round's take the pages of the
last one's. Checked in fresh processes, from glibc's own account of its heaps
(``malloc_stats``) and the kernel's count of page faults, against processes tuned
otherwise."""

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


#: A 40 MB array made, filled and freed, three times after a first: the page faults each
#: fill took (argv[1]: the coordinator's tuning, or a participant's on top of it).
ARRAYS_MADE_AGAIN = """
import resource, sys
import numpy as np
from fedq.runtime.allocator import keep_model_buffers
from fedq.runtime.tuning import tune_process
assert tune_process()
if sys.argv[1] == "participant":
    assert keep_model_buffers()
def faults() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model = np.empty(10_000_000, np.float32)
    model[:] = 1.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(*(faults() for _ in range(3)))
"""


def _run(script: str, how: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh process whose environment sets no malloc settings of its own."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "FEDQ_MALLOC_TUNING")
    }
    return subprocess.run(
        [sys.executable, "-c", script, how], capture_output=True, text=True, check=True, env=env
    )


def _heaps(how: str) -> int:
    """Heaps glibc made."""
    return _run(THREADS_ALLOCATE, how).stderr.count("Arena ")


def test_threads_share_one_heap_once_tuned():
    assert _heaps("untuned") > 1  # what the tuning changes: else this test shows nothing
    assert _heaps("tuned") == 1


def test_a_participants_arrays_take_the_pages_of_those_freed_before():
    """Mapped fresh, a 40 MB array faults its pages in every time (hundreds with huge
    pages, 10,000 without); from a participant's heap, none."""
    assert min(map(int, _run(ARRAYS_MADE_AGAIN, "coordinator").stdout.split())) > 100
    assert max(map(int, _run(ARRAYS_MADE_AGAIN, "participant").stdout.split())) == 0
