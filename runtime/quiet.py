"""Keeping a native library's start-up lines off the process's stderr.

TensorFlow's C++ runtime prints its start-up lines (oneDNN, CPU features, absl's
warning) straight to file descriptor 2 while it loads, whatever ``TF_CPP_MIN_LOG_LEVEL``
says; the coordinator's output and a participant's log would carry them. Python-level
redirection cannot catch them: fd 2 itself is pointed at /dev/null meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (what fedq itself writes there in the
    meantime is lost too: keep the block to the import or call that chatters)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
