"""A version that can never close, said while the federation runs (issue 22).

A version closes with K updates, or at its deadline with ``min_quorum``; below that the
deadline extends, forever. So when the updates in plus the live participants that may
still send one are fewer than ``min_quorum``, nothing but another participant (or a
lower ``--min-quorum``) lets the federation go on, and an operator should hear it, not
watch "1/3 updates" for an hour. Pure: :func:`stall_of` looks at the open version and the
participants alive; :class:`StallWatch` says when that changes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedq.coordinator.modes import OpenVersion

log = logging.getLogger("fedq.coordinator")

#: How long a stall must last before it is said: participants starting together join
#: within a second or two, and a line for each would only be noise.
GRACE_SECONDS = 3.0
#: At most one look a second: a look costs O(N + K), and a busy version has a delivery
#: every millisecond (1,000 participants in a process).
LOOK_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class Stall:
    """Why the version being made cannot close."""

    #: The version being made (the model it will be).
    version: int
    #: The fewest updates it may close with: ``min_quorum`` (K unless lowered).
    needs: int
    #: Updates in that count toward it.
    has: int
    #: Participants alive (at most N).
    alive: int
    #: Of them, those that may still send one (alive, not yet in, drawn if sampling).
    may_send: int

    def describe(self) -> str:
        return (
            f"version {self.version} cannot close: it needs {self.needs} updates and "
            f"{self.alive} participants are alive ({self.has} updates in, {self.may_send} "
            f"participants yet to send), and its deadline only extends below "
            f"--min-quorum {self.needs}; start another participant, or set --min-quorum "
            f"below {self.needs} so that it closes at its --round-timeout"
        )


def stall_of(window: OpenVersion, alive: set[str], counted_alive: int) -> Stall | None:
    """Whether ``window`` cannot close with the participants ``alive`` (``counted_alive``:
    their number as membership counts it, at most N)."""
    yet = alive - {r.participant for r in window.records if window.late_counts or not r.staleness}
    if window.sample is not None:
        yet &= window.sample
    if window.counted + len(yet) >= window.min_quorum:
        return None
    return Stall(window.version + 1, window.min_quorum, window.counted, counted_alive, len(yet))


class StallWatch:
    """Says a stall once it lasted :data:`GRACE_SECONDS`, again when its numbers change,
    and that it is resolved when it is (to ``say``: the observers)."""

    def __init__(
        self,
        alive: Callable[[], tuple[set[str], int]],
        say: Callable[[int, Stall | None], None],
        grace: float = GRACE_SECONDS,
        every: float = LOOK_EVERY_SECONDS,
    ) -> None:
        self.alive = alive
        self.say = say
        self.grace = grace
        self.every = every
        self._looked = -math.inf
        #: The stall seen last, and since when (monotonic).
        self._seen: Stall | None = None
        self._since = 0.0
        #: The stall last said (None: none, or it was said resolved).
        self.said: Stall | None = None

    def check(self, window: OpenVersion, now: float | None = None) -> bool:
        """Look at ``window`` now; say what changed. Returns whether something was said."""
        now = time.monotonic() if now is None else now
        if now - self._looked < self.every:
            return False
        self._looked = now
        stall = stall_of(window, *self.alive())
        if stall != self._seen:
            self._seen, self._since = stall, now
        if stall is None:
            return self.resolved(window.version + 1)
        if stall != self.said and (self.said is not None or now - self._since >= self.grace):
            self.said = stall
            log.info("%s", stall.describe())
            self.say(stall.version, stall)
            return True
        return False

    def resolved(self, version: int) -> bool:
        """The stall said (if any) is over: ``version`` can close, or was committed.
        Returns whether that was said."""
        if self.said is None:
            return False
        self.said = None
        self.say(version, None)
        return True
