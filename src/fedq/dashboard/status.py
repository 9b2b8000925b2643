"""The status of one source of the page: up, down with what to do, or not tried yet."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class SourceStatus:
    ok: bool | None = None  # None: not tried yet
    #: What works, or what went wrong and what to do about it: one line for the page.
    message: str = "connecting"
    #: Since when it is up (or down).
    since: float = field(default_factory=time.time)

    def set(self, ok: bool, message: str) -> None:
        if ok != self.ok:
            self.since = time.time()
        self.ok, self.message = ok, message
