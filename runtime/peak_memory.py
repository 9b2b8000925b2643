"""A process's peak resident memory, as the kernel counts it: VmHWM of /proc/PID/status.

Not ``ru_maxrss``: that one survives exec, so for a child it includes the memory of the
parent it was forked from. VmHWM is the high-water mark of the process's own memory, and
stays right for a process killed by SIGKILL, as long as it was read while the process was
alive. Linux only, which is where fedq's memory bounds are measured (bench/, tests/).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

#: How often :class:`PeakRss` reads the high-water mark.
SAMPLE_SECONDS = 0.05


def vm_hwm_kib(pid: int | str = "self") -> int | None:
    """The peak resident memory of process ``pid`` so far, in KiB; None once it is gone (or
    a zombie, which has no memory left to report)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


class PeakRss:
    """A process's peak resident memory, read every :data:`SAMPLE_SECONDS` by a thread of
    its own from when this is made until the process ends: right even when the process
    ended while the caller looked elsewhere and a ``poll()`` reaped it, which leaves
    nothing to read after."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.kib = 0
        self._watcher = threading.Thread(target=self._watch, name=f"peak-rss-{pid}", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while (kib := vm_hwm_kib(self._pid)) is not None:
            self.kib = max(self.kib, kib)
            time.sleep(SAMPLE_SECONDS)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the watcher's last reading (the process has ended)."""
        self._watcher.join(timeout)

    @property
    def mib(self) -> float:
        return self.kib / 1024
