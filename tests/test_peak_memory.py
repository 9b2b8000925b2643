"""The peak resident memory the memory bounds of bench/ and tests/ are checked against."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedq.runtime.peak_memory import PeakRss, vm_hwm_kib
from tests.helpers import until

pytestmark = pytest.mark.processes

#: A child that touches 160 MiB, then waits for a line on stdin before it ends.
GROW = "b = bytearray(160 << 20); print('ok', flush=True); input()"


def test_a_watched_process_peak_is_what_it_touched_and_the_watch_ends_with_it():
    child = subprocess.Popen(
        [sys.executable, "-c", GROW], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdin is not None
    peak = PeakRss(child.pid)
    assert child.stdout.readline() == "ok\n"
    until(lambda: peak.mib, lambda mib: mib >= 160, what="the watcher to read the peak", within=30)
    child.stdin.write("\n")
    child.stdin.close()
    assert child.wait(timeout=30) == 0
    peak.join(timeout=10)
    assert peak.mib < 400, peak.mib  # the bytearray and the interpreter, no more
    assert vm_hwm_kib(child.pid) is None  # reaped: nothing left to read


def test_this_process_has_a_peak():
    kib = vm_hwm_kib()
    assert kib is not None and kib > 1024
