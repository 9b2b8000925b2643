"""A coordinator's state dir, checked and held before anything touches the broker.

Everything a coordinator can find wrong on its own disk is found here, in this order, and
reported as one line saying what to do: the folder cannot be written
(:class:`StateDirUnwritable`), another coordinator holds it (:class:`StateDirInUse`), the
ledger is damaged or of another schema (a
:class:`~fedq.coordinator.ledger_schema.LedgerError`), it belongs to another federation or
to another app's model (:class:`~fedq.coordinator.config.ConfigError`), or its last
checkpoint cannot be read (:class:`~fedq.coordinator.checkpoint.CheckpointError`). The
coordinator declares its queues and exchanges only after all of them passed.

What must stay true:

- at most one process holds a state dir: an exclusive ``flock`` on :data:`LOCK_FILE`
  inside it, taken before the ledger is opened and held for the coordinator's lifetime.
  The kernel drops it when the process ends, however it ends (``kill -9`` included), so a
  stale lock file never blocks the next coordinator; the pid written into it only names
  the holder in the message;
- the model's signature (each tensor's name, shape and dtype) is recorded in the ledger's
  ``meta`` at v0, and a coordinator whose app makes another signature is refused before it
  resumes (:func:`model_signature`).

A standby coordinator would wait for the lock with :meth:`StateDirLock.wait` and then
open the state dir as the active one did; nothing here assumes the holder is the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedq.coordinator.app import CoordinatorApp
from fedq.coordinator.checkpoint import (
    CheckpointError,
    checkpoint_path,
    load_optimizer_state,
    map_checkpoint,
    remove_staged,
    save_checkpoint,
)
from fedq.coordinator.config import ConfigError
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.ledger_schema import reading
from fedq.coordinator.rollback import DAMAGED_PREFIX, roll_back_to_last_good
from fedq.messages.codec import Weights

log = logging.getLogger("fedq.coordinator")

#: The lock's file in a state dir; its content is the holder's pid, for the message only.
LOCK_FILE = "coordinator.lock"
#: The ledger's ``meta`` key of the model's signature, recorded at v0.
SIGNATURE_KEY = "model_signature"


class StateDirUnwritable(ConfigError):
    """The state dir cannot be created or written."""

    def __init__(self, path: Path, exc: OSError) -> None:
        super().__init__(
            f"state dir {path} is not writable ({exc.strerror or exc}): pass a --state-dir "
            "this user can write, or fix its permissions"
        )


class StateDirInUse(ConfigError):
    """Another coordinator holds the state dir's lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = "another coordinator" + (f" (pid {pid})" if pid is not None else "")
        super().__init__(
            f"state dir {path} is in use by {holder}: run one coordinator per state dir; "
            "stop that one first, pass another --state-dir, or add --standby to take over "
            "when it stops"
        )
        self.pid = pid


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write a file in it (then remove it); else
    :class:`StateDirUnwritable`. Asking the file system, not ``os.access``: root passes
    every permission check and still cannot write a read-only mount."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".fedq-probe-"):
            pass
    except OSError as exc:
        raise StateDirUnwritable(folder, exc) from None


class StateDirLock:
    """The exclusive lock of one state dir (``flock`` on :data:`LOCK_FILE`).

    :meth:`try_acquire` never waits, :meth:`acquire` refuses with the holder's pid, and
    :meth:`wait` (for a standby) returns once the holder is gone. :meth:`release`, or the
    end of the process, frees it. Two locks of one folder exclude each other even within
    one process (``flock`` locks belong to the open file, not to the process)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if no one holds it and write this pid into it; False if held."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateDirUnwritable(self.folder, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        # Only the holder writes: truncating before the lock would erase the holder's pid.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return True

    def acquire(self) -> None:
        """Take the lock now, or :class:`StateDirInUse` naming the holder."""
        if not self.try_acquire():
            raise StateDirInUse(self.folder, self.holder())

    async def wait(self, interval: float = 0.5) -> None:
        """Return holding the lock, once whoever holds it now is gone. Polls (a blocking
        ``flock`` in a thread could not be cancelled), so cancelling the waiter is safe."""
        while True:
            if await asyncio.to_thread(self.try_acquire):
                return
            await asyncio.sleep(interval)

    def holder(self) -> int | None:
        """The pid the holder wrote, if it did (it may not have yet)."""
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None


def model_signature(weights: Mapping[str, np.ndarray]) -> list[list[object]]:
    """Each tensor's name, shape and dtype, in model order: what two apps must share for
    one to resume the other's federation."""
    return [[name, list(w.shape), np.dtype(w.dtype).str] for name, w in weights.items()]


def describe_difference(recorded: list[list[object]], actual: list[list[object]]) -> str:
    """The first difference between two signatures, in words."""
    theirs = {str(t[0]): t for t in recorded}
    mine = {str(t[0]): t for t in actual}
    if theirs.keys() != mine.keys():
        only = sorted(theirs.keys() - mine.keys())
        extra = sorted(mine.keys() - theirs.keys())
        return (
            f"its tensors are {len(recorded)} ({', '.join(list(theirs)[:4])}...), this app's "
            f"{len(actual)}; only there: {only[:3]}, only in this app: {extra[:3]}"
        )
    for name, tensor in theirs.items():
        if tensor != mine[name]:
            return f"tensor {name!r} is {tensor[1:]} there, {mine[name][1:]} in this app"
    return "its tensors are in another order"


@dataclass
class Restored:
    """The model a coordinator goes on from, read from the state dir."""

    weights: Weights
    version: int
    optimizer_state: dict[str, np.ndarray]


class StateDir:
    """A coordinator's state dir, held (:class:`StateDirLock`) with its ledger open.

    :meth:`open` makes the checks that need no app, :meth:`restore` those that need it;
    both before the broker is touched. :meth:`close` closes the ledger and frees the lock."""

    def __init__(self, folder: Path, lock: StateDirLock, ledger: UpdateLedger) -> None:
        self.folder = folder
        self.lock = lock
        self.ledger = ledger
        self.restored: Restored | None = None

    @classmethod
    def open(cls, folder: Path, federation: str, lock: StateDirLock | None = None) -> StateDir:
        """Check ``folder`` is writable, lock it (or take ``lock``, already held: a standby
        that waited for it), open its ledger and check it is ``federation``'s (recording
        that if new). Blocking: run it in a thread."""
        check_writable(folder)
        if lock is None:
            lock = StateDirLock(folder)
            lock.acquire()
        try:
            ledger = UpdateLedger(folder / "ledger.sqlite")
        except BaseException:
            lock.release()
            raise
        state = cls(folder, lock, ledger)
        try:
            with reading(ledger.path):
                state._claim(federation)
        except BaseException:
            state.close()
            raise
        return state

    def _claim(self, federation: str) -> None:
        known = self.ledger.get_meta("federation")
        if known is not None and known != federation:
            raise ConfigError(
                f"state dir {self.folder} belongs to federation {known!r}; use another --state-dir"
            )
        self.ledger.set_meta("federation", federation)

    def restore(self, app: CoordinatorApp, from_last_good: bool = False) -> Restored:
        """The model to go on from: the ledger's last version, or the app's v0, once the
        app's model signature matched the one recorded at v0 (recorded now if it was not);
        ``from_last_good``: first roll back to the newest version whose checkpoint is sound
        (:mod:`.rollback`). Blocking, and done once: later calls return the same."""
        if self.restored is None:
            with reading(self.ledger.path):
                if from_last_good:
                    roll_back_to_last_good(self.folder, self.ledger)
                self.restored = self._restore(app)
        return self.restored

    def _restore(self, app: CoordinatorApp) -> Restored:
        models = self.folder / "models"
        if models.is_dir() and (removed := remove_staged(models)):
            log.info("removed %d checkpoint(s) staged and never committed", removed)
        initial = app.initial_weights()
        actual = model_signature(initial)
        last = self.ledger.last_version()
        recorded = self.ledger.get_meta(SIGNATURE_KEY)
        if recorded is not None:
            self._check_signature(json.loads(recorded), actual)
        if last is None:
            # The ledger decides: a checkpoint without a committed version is redone.
            self.ledger.set_meta(SIGNATURE_KEY, json.dumps(actual))
            path = save_checkpoint(models, 0, initial)
            del initial
            return Restored(map_checkpoint(path), 0, {})
        del initial
        # A checkpoint newer than the ledger's last version was written by a coordinator
        # that died before committing it, and is overwritten when the version is redone.
        path = checkpoint_path(models, last.version)
        try:
            weights = map_checkpoint(path)
        except CheckpointError as exc:
            raise CheckpointError(
                path,
                exc.why,
                f"go on from the last good version with --from-last-good (what comes after "
                f"it is moved to {self.folder}/{DAMAGED_PREFIX}<time>/), or restore it from "
                f"a backup; `fedq audit --state-dir {self.folder}` checks every checkpoint",
            ) from None
        if recorded is None:  # a ledger of an older fedq: its model gives the signature
            found = model_signature(weights)
            self._check_signature(found, actual)
            self.ledger.set_meta(SIGNATURE_KEY, json.dumps(found))
        return Restored(weights, last.version, load_optimizer_state(path))

    def _check_signature(self, recorded: list[list[object]], actual: list[list[object]]) -> None:
        if recorded != actual:
            raise ConfigError(
                f"state dir {self.folder} holds another app's model "
                f"({describe_difference(recorded, actual)}): resume it with the app it was "
                "started with, or pass another --state-dir"
            )

    def close(self) -> None:
        """Close the ledger and free the lock; safe to call twice."""
        with contextlib.suppress(Exception):
            self.ledger.close()
        self.lock.release()
