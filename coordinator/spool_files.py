"""Spool files reused instead of made anew: an update's chunks are written over pages the
kernel has cached already.

Why: the assembler writes every chunk of every chunked update to a spool file (400 MB a
round at P = 10M and 10 participants). Written into a new file, each 4 KiB page of it is
allocated, charged and put in the page cache, and freed again when the file is removed at
the version's end; written over a file the page cache holds, it is a copy. The numbers
are in bench/README ("Where a round's time goes").

What must stay true:
- A file is reused only once its last name is retired: :meth:`SpoolFiles.retire` counts
  the file's links, so a spool an aggregation still reads under a second name
  (:meth:`~.assembly.ChunkedDelta.keep`) is left alone, and whichever name goes last
  hands the file over.
- A reused file may be longer than what is written to it now: readers read by offset and
  size (:class:`~.assembly.SpooledChunk`), never to the end.
- At most ``most`` files wait for reuse, so disk stays within the assembler's own bound
  (``max_streams`` updates) twice over; the rest are removed as before.
- Names may be retired from several threads (a stream closed on the event loop, a kept
  name released by a worker); a lock orders them.
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path


class SpoolFiles:
    """Where spool files come from and go back to, in ``folder``."""

    def __init__(self, folder: Path, most: int) -> None:
        self.folder = folder
        self.most = most
        self._free: list[Path] = []
        self._names = itertools.count()
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        """Files waiting for reuse."""
        return len(self._free)

    def take(self, path: Path) -> None:
        """A file at ``path`` to write a spool into from offset 0: a retired one under its
        new name when there is one, else a new, empty one. Either way a new file at
        ``path``: a file an older name there shared with a second name stays as it was."""
        with self._lock:
            if self._free:
                os.replace(self._free.pop(), path)
                return
        path.unlink(missing_ok=True)
        path.open("xb").close()

    def retire(self, path: Path) -> None:
        """``path`` is no longer read: kept for reuse if it is the file's last name and
        there is room, else removed. A name already gone is nothing to do."""
        with self._lock:
            try:
                links = path.stat().st_nlink
            except FileNotFoundError:
                return
            if links == 1 and len(self._free) < self.most:
                free = self.folder / f"free-{next(self._names)}.spool"
                os.replace(path, free)
                self._free.append(free)
                return
            path.unlink(missing_ok=True)
