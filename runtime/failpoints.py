"""Named points where a test can have a real process die by SIGKILL, or hold still, in the
middle of what it is doing (gofail's failpoints, FoundationDB's BUGGIFY, in their simplest
form).

``FEDQ_FAILPOINT=after_checkpoint`` makes the process kill itself the first time it reaches
``failpoint("after_checkpoint")``; ``after_checkpoint:3`` the third time. Nothing else is
simulated: the process gets the same SIGKILL as from ``kill -9``, so what the fault tests
then check (nothing confirmed is lost, nothing is applied twice) is what happens to a real
crash at that very instruction, not at whatever moment an outside ``kill`` happens to land.

``after_checkpoint:3:stop`` stops the process there instead (SIGSTOP, as ``kill -STOP``, a
debugger or an overloaded host would hold it), until the test sends SIGCONT: the test sees
it stopped (state ``T`` in ``/proc/PID/stat``), does what it wants done at that instruction
(restart the broker under it), and lets it go on, its connections as the fault left them.
``after_ledger_commit:2,5,8:stop`` stops it at each of those hits: the process cannot run
past the last moment the test wants, however slowly the test gets there. Several points are
armed at once with ``;`` between them (``publishing_model:10:stop;after_ledger_commit:15:stop``),
each counting its own hits: a test can stop a process where it acts and also hold it short
of its last version, so that the federation cannot end before the test is done with it.

Unset (every deployment), a failpoint is one test of an empty dict.

The coordinator's points, in the order a version reaches them:

- ``collecting``: an update was just folded into the open version (held, not acked);
- ``after_checkpoint``: the new version's checkpoint is on disk, the ledger does not know it;
- ``after_ledger_commit``: the ledger committed the version, its updates are not yet acked;
- ``publishing_model``: a chunk of a new version's chunked model went to every participant,
  the chunks after it did not (hit n: the nth chunk of the fanouts, v0's first);
- ``between_versions``: a version is committed, acked and announced, the next not opened.

A participant's points:

- ``training``: it took a model to train on and released its queue (if it releases it while
  training); training has not started (hit n: the nth model it trains on);
- ``publishing_update``: a chunk of its update was confirmed by the broker, the chunks after
  it were not sent (hit n: the nth chunk it has sent, counting every update's).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

POINTS = (
    "collecting",
    "after_checkpoint",
    "after_ledger_commit",
    "publishing_model",
    "between_versions",
    "training",
    "publishing_update",
)
#: What an armed point does: die (the default) or stop until SIGCONT.
ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


@dataclass(frozen=True)
class Armed:
    """At which of its hits a point fires, and with which signal."""

    hits: frozenset[int]
    signal: signal.Signals


def _armed(spec: str | None) -> dict[str, Armed]:
    """The points ``spec`` arms, by name (none when unset)."""
    armed: dict[str, Armed] = {}
    for one in filter(None, (spec or "").split(";")):
        name, _, rest = one.partition(":")
        nth, _, action = rest.partition(":")
        if name not in POINTS:
            raise ValueError(f"FEDQ_FAILPOINT={spec!r}: no such failpoint; the points are {POINTS}")
        if action and action not in ACTIONS:
            raise ValueError(
                f"FEDQ_FAILPOINT={spec!r}: no such action; the actions are {tuple(ACTIONS)}"
            )
        if name in armed:
            raise ValueError(
                f"FEDQ_FAILPOINT={spec!r}: {name} is armed twice; list its hits once (2,5,8)"
            )
        hits = frozenset(int(n) for n in (nth or "1").split(","))
        armed[name] = Armed(hits, ACTIONS[action or "kill"])
    return armed


_ARMED = _armed(os.environ.get("FEDQ_FAILPOINT"))
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Die here by SIGKILL, or stop by SIGSTOP, if ``FEDQ_FAILPOINT`` arms this point (and
    this is one of its armed hits)."""
    armed = _ARMED.get(name) if _ARMED else None
    if armed is None:
        return
    _hits[name] = hit = _hits.get(name, 0) + 1
    if hit in armed.hits:
        os.kill(os.getpid(), armed.signal)
