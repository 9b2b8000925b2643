"""The board: everything the page shows, kept fresh by one loop per source.

Three sources, each with its own status: the ledgers under the state dir (history, the
DLQ's reasons), the control exchanges (live progress and heartbeats) and the management API
(queues). A source that fails shows its status with what to do; the others go on, and it is
asked again every few seconds. ``snapshot`` is the one JSON document the page renders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedq.coordinator.ledger_view import LEDGER, find_ledgers
from fedq.coordinator.roster import Roster
from fedq.coordinator.stale_notice import STALE_STREAK, keep_late_updates
from fedq.dashboard.ledgers import FederationLedger, read_federation
from fedq.dashboard.live import ControlListener, FederationLive, LiveState
from fedq.dashboard.status import SourceStatus
from fedq.management import ManagementClient, ManagementUnavailable, QueueStats
from fedq.messages.schema import ControlMessage, FederationDone, RoundClosed, VersionProgress

log = logging.getLogger("fedq.dashboard")

#: A federation with no ledger here leaves the page this long after its last event, once
#: its control exchange is gone from the broker.
FORGET_AFTER_SECONDS = 600.0
#: The shortest pause between two reads of the ledgers (or the management API).
_SOONEST = 0.5


class Board:
    def __init__(
        self,
        state_dir: Path,
        broker_url: str,
        management_url: str,
        *,
        refresh_seconds: float = 2.0,
        roster: Roster | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.refresh_seconds = refresh_seconds
        self.management = ManagementClient(management_url, broker_url)
        self.live = LiveState(roster)
        self.listener = ControlListener(broker_url, self._watched, self._heard, self.touch)
        self.ledgers: dict[str, FederationLedger] = {}
        #: Ledger paths by federation name, for paging the DLQ.
        self.ledger_paths: dict[str, Path] = {}
        self.ledger_status = SourceStatus()
        self.management_status = SourceStatus()
        #: The last queue statistics the management API gave, and when.
        self.queues: list[QueueStats] = []
        self.queues_at: float | None = None
        self.on_broker: set[str] = set()
        #: Bumped on every change; ``changed`` wakes whoever waits for the next one.
        self.revision = 0
        self._changed = asyncio.Event()
        #: Set when the dashboard shuts down: the event streams end.
        self.closing = asyncio.Event()
        #: Set when a federation's progress moved: its ledger is read again at once.
        self._progress_seen = asyncio.Event()

    # ------------------------------------------------------------- running
    async def run(self) -> None:
        """Refresh every source until cancelled."""
        async with self.management:
            await asyncio.gather(
                self.listener.run(),
                _every(self.refresh_seconds, self.refresh_ledgers, self._progress_seen),
                _every(self.refresh_seconds, self.refresh_management),
            )

    def touch(self) -> None:
        self.revision += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """End the event streams, which would otherwise hold the web server's shutdown."""
        self.closing.set()
        self.touch()

    async def changed(self, within: float) -> None:
        """Return at the next change, or after ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), within)

    async def refresh_ledgers(self) -> None:
        ledgers, status = await asyncio.to_thread(_read_ledgers, self.state_dir)
        self.ledgers = {ledger.federation: ledger for ledger in ledgers}
        self.ledger_paths = {
            ledger.federation: Path(ledger.state_dir) / LEDGER for ledger in ledgers
        }
        self.ledger_status.set(*status)
        self.touch()

    async def refresh_management(self) -> None:
        try:
            self.queues = await self.management.queues()
            self.on_broker = await self.management.federations()
            self.queues_at = time.time()
        except ManagementUnavailable as exc:
            if self.management_status.ok is not False:
                log.warning("%s", exc)
            self.management_status.set(False, str(exc))
        else:
            self.management_status.set(
                True, f"{len(self.queues)} fedq queue(s) on {self.management.where}"
            )
        self.touch()

    def _watched(self) -> set[str]:
        return set(self.ledgers) | self.on_broker

    def _heard(self, message: ControlMessage) -> None:
        self.live.apply(message, time.time())
        if isinstance(message, VersionProgress | RoundClosed | FederationDone):
            self._progress_seen.set()  # an update was accepted or a version committed
        self.touch()

    # ------------------------------------------------------------ snapshot
    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        heard = {
            name
            for name, live in self.live.federations.items()
            if now - live.last_event < FORGET_AFTER_SECONDS or name in self.on_broker
        }
        names = sorted(set(self.ledgers) | heard)
        return {
            "now": now,
            "revision": self.revision,
            "state_dir": str(self.state_dir),
            "status": {
                "broker": asdict(self.listener.status),
                "management": asdict(self.management_status),
                "ledgers": asdict(self.ledger_status),
            },
            "federations": [
                _federation(name, self.ledgers.get(name), self.live.federations.get(name), now)
                for name in names
            ],
            "queues": [asdict(q) for q in self.queues],
            "queues_at": self.queues_at,
        }


def _read_ledgers(state_dir: Path) -> tuple[list[FederationLedger], tuple[bool, str]]:
    try:
        found = find_ledgers(state_dir)
    except OSError as exc:
        return [], (False, f"cannot read the state dir {state_dir}: {exc.strerror}")
    ledgers = [read_federation(name, path) for name, path in found.items()]
    if not ledgers:
        return [], (
            True,
            f"no ledger under {state_dir} yet: pass the --state-dir the coordinators use",
        )
    return ledgers, (True, f"{len(ledgers)} ledger(s) under {state_dir}, read-only")


def _federation(
    name: str, ledger: FederationLedger | None, live: FederationLive | None, now: float
) -> dict[str, Any]:
    """One federation's card: the ledger's history merged with what is live."""
    progress = live.progress if live else None
    versions = ledger.versions if ledger else []
    last = versions[-1] if versions else None
    card: dict[str, Any] = {
        "name": name,
        "state_dir": ledger.state_dir if ledger else None,
        "ledger_error": ledger.error if ledger else None,
        "mode": progress.mode if progress else None,
        "version": max(progress.version if progress else 0, last.version if last else 0),
        "rounds_total": progress.rounds_total if progress else None,
        "round": progress.round if progress else None,
        "accepted": progress.accepted if progress else None,
        "quorum": progress.quorum if progress else None,
        "refused": progress.refused if progress else None,
        "deadline_at": (live.progress_at + progress.seconds_left) if live and progress else None,
        "cannot_close": progress.cannot_close if progress else None,
        "progress_at": live.progress_at if live and progress else None,
        "done": bool(live and live.finished) or _finished_by_ledger(ledger, live),
        # When anything was last heard or committed: the picker lists by it.
        "last_activity": max(live.last_event if live else 0.0, last.committed_at if last else 0.0),
        "epsilon": last.epsilon if last else None,
        "versions": [asdict(v) for v in versions],
        "rejected_by_reason": ledger.rejected_by_reason if ledger else {},
        "rejections": ledger.recent_rejections if ledger else [],
        "participants": _participants(ledger, live, now),
    }
    if (
        card["rounds_total"] is not None
        and card["version"] >= card["rounds_total"]
        and not card["done"]
    ):
        card["done"] = True  # the last version is committed; federation.done may be missed
    if card["done"]:
        card["cannot_close"] = None
    card["left_behind"] = [] if card["done"] else _left_behind(card["participants"])
    card["keep_late_updates"] = keep_late_updates(card["mode"])
    return card


def _left_behind(participants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Participants the running federation is leaving out: at least as many updates in a
    row refused as stale since the newest folded one as make the coordinator warn and
    send it the newest model (:mod:`fedq.coordinator.stale_notice`)."""
    return [
        {"participant": p["participant"], "refused": p["stale_since_folded"]}
        for p in participants
        if p["stale_since_folded"] >= STALE_STREAK
    ]


def _finished_by_ledger(ledger: FederationLedger | None, live: FederationLive | None) -> bool:
    """Finished as its ledger says, and no version opened since (a coordinator started
    again on it goes on)."""
    if ledger is None or ledger.finished_at is None:
        return False
    return live is None or live.progress_at <= ledger.finished_at


def _participants(
    ledger: FederationLedger | None, live: FederationLive | None, now: float
) -> list[dict[str, Any]]:
    recorded = {p.participant: p for p in ledger.participants} if ledger else {}
    seen = live.participants if live else {}
    rows = []
    for pid in sorted(recorded.keys() | seen.keys()):
        record, beat = recorded.get(pid), seen.get(pid)
        rows.append(
            {
                "participant": pid,
                "state": beat.shown_state(now) if beat else None,
                "last_heartbeat": beat.last_seen if beat else None,
                "version": beat.version if beat else None,
                "updates_sent": beat.updates_sent if beat else None,
                "bytes_sent": beat.bytes_sent if beat else None,
                "accepted": record.accepted if record else 0,
                "rejected": record.rejected if record else 0,
                "max_staleness": record.max_staleness if record else 0,
                "last_staleness": record.last_staleness if record else 0,
                "share": record.share if record else 0.0,
                "stale_since_folded": record.stale_since_folded if record else 0,
            }
        )
    return rows


async def _every(
    seconds: float, step: Callable[[], Awaitable[None]], sooner: asyncio.Event | None = None
) -> None:
    """Run ``step`` every ``seconds`` until cancelled, or as soon as ``sooner`` is set (but
    at most every _SOONEST seconds). A step handles the failures it expects; anything else
    is logged and the loop goes on: the page must stay up."""
    while True:
        try:
            await step()
        except Exception:
            log.exception("dashboard refresh failed; trying again in %.0f s", seconds)
        await asyncio.sleep(_SOONEST)
        if sooner is None:
            await asyncio.sleep(seconds - _SOONEST)
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sooner.wait(), seconds - _SOONEST)
        sooner.clear()
