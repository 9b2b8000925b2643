"""No participant silently excluded: one whose updates keep being refused as ``stale``.

A participant slower than the federation's versions can send update after update that
arrives beyond ``--max-staleness``: each is refused (and dead-lettered), and nothing of its
data reaches the model, while it keeps training on models long gone. After ``after``
refusals as stale in a row (none folded between), the coordinator makes sure its own
queue holds the current model (the queue keeps only the newest message, so what waits
there is the newest; an empty one is sent it, as a join is answered): that is what it
trains on next, it is told and moved to the newest model. And it warns in one line naming
it, at most once per ``warn_seconds`` per participant, so a straggler that stays one does
not flood the log. An update of it folded resets the count.

Pure: the clock is given; the collector does the sending and the logging.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

#: Refusals as stale in a row before the participant is sent the newest model.
STALE_STREAK = 2
#: The warning about one participant, at most this often.
WARN_SECONDS = 60.0
#: What keeps a straggler's updates, by mode: the coordinator's warning about one left
#: behind says it, and so does the dashboard.
KEEP_LATE_UPDATES = {
    "async": "Raise --max-staleness, or use --async-remedy, to keep its updates",
    "quorum": "Use --late-updates fold (and --max-staleness) to keep its updates",
    "sync": "Use --late-updates fold (and --max-staleness) to keep its updates",
}
#: The hint when the mode is not known (a dashboard that has not heard the federation).
KEEP_ANY_MODE = (
    "Raise --max-staleness, or fold late updates (--late-updates fold, --async-remedy), to "
    "keep its updates"
)


def keep_late_updates(mode: str | None) -> str:
    """What keeps a left-behind participant's updates in ``mode`` (any mode's, if None)."""
    return KEEP_LATE_UPDATES.get(mode or "", KEEP_ANY_MODE)


@dataclass(frozen=True)
class Notice:
    """What to do about a participant just refused as stale."""

    #: Send it the current model now.
    tell: bool
    #: Say so in the log (rate-limited).
    warn: bool
    #: Its refusals as stale in a row, this one included.
    streak: int


class StaleNotice:
    """Each participant's refusals as stale in a row and its last warning, for at most
    ``remember`` participants: the ids are what senders claim (unless ``--roster`` or
    ``--verify-identity``), so the one refused longest ago is forgotten past that."""

    def __init__(
        self,
        after: int = STALE_STREAK,
        warn_seconds: float = WARN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        remember: int = 10_000,
    ) -> None:
        assert after >= 1 and remember >= 1, "told after at least one refusal"
        self.after = after
        self.warn_seconds = warn_seconds
        self.clock = clock
        self.remember = remember
        #: participant -> (refusals in a row, when it was last warned about, if ever)
        self._seen: dict[str, tuple[int, float | None]] = {}

    def refused(self, participant: str) -> Notice:
        """``participant``'s update was refused as stale."""
        streak, warned = self._seen.pop(participant, (0, None))
        streak += 1
        tell = streak % self.after == 0
        now = self.clock()
        warn = tell and (warned is None or now - warned >= self.warn_seconds)
        self._seen[participant] = (streak, now if warn else warned)  # the newest, last
        if len(self._seen) > self.remember:
            del self._seen[next(iter(self._seen))]
        return Notice(tell, warn, streak)

    def folded(self, participant: str) -> None:
        """An update of ``participant`` was folded: it is no longer being left out (when it
        was last warned about still holds back the next warning)."""
        if (seen := self._seen.get(participant)) is not None:
            self._seen[participant] = (0, seen[1])
