"""``--from-last-good``: go on from the newest version whose checkpoint is sound.

The state dir keeps a checkpoint per committed version (``models/model-vNNNNNN.npz``,
none ever removed), and the ledger records each one's sha256. So when the newest
checkpoint is damaged (a disk that lost its tail, a copy cut short), the versions before
it are still there, each checkable against what the ledger says it was. Going back to the
newest sound one is a choice an operator makes (it loses the work of the versions after
it), so it is a flag, never automatic:

- sound: the file is there, its sha256 is the one the ledger recorded, and it reads
  (version 0, the app's initial model, is not in the ledger: it only has to read);
- nothing is deleted: the checkpoints after the sound one, and a copy of the ledger as it
  was (SQLite's online backup), go to ``damaged-<UTC time>/`` in the state dir;
- exactly-once stays true: the versions after it leave the ledger with their updates in
  one transaction (:meth:`~.ledger.UpdateLedger.roll_back`), and each of those updates is
  recorded as refused ``rolled_back``. Their deliveries were acked when their version was
  committed, so no copy comes back: that work is lost, and said so, not counted as
  applied. ``fedq audit`` passes afterwards, sent logs included.

Participants still running from before ignore a model older than one they trained on:
they must be restarted (fresh ones take whatever model is current).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from fedq.coordinator.checkpoint import (
    CheckpointError,
    checkpoint_versions,
    file_sha256,
    load_optimizer_state,
    map_checkpoint,
)
from fedq.coordinator.ledger import UpdateLedger

log = logging.getLogger("fedq.coordinator")

#: The prefix of the folder what was rolled back goes to.
DAMAGED_PREFIX = "damaged-"


@dataclass(frozen=True)
class RolledBack:
    """What :func:`roll_back_to_last_good` did."""

    #: The version gone on from, and the ledger's last one before.
    good: int
    last: int
    #: Where the checkpoints after ``good`` and the ledger's copy went.
    folder: Path
    #: The updates of the versions after ``good``: lost, recorded as refused.
    updates: int
    #: What was wrong with the newest checkpoint.
    why: str

    def describe(self) -> str:
        lost = f"v{self.last}" if self.last == self.good + 1 else f"v{self.good + 1}-v{self.last}"
        return (
            f"rolled back from v{self.last} to v{self.good}, the last version whose checkpoint "
            f"matches the ledger (v{self.last}'s {self.why}); the checkpoints after it and a "
            f"copy of the ledger are in {self.folder}; the {self.updates} updates of {lost} "
            "are lost (recorded as refused rolled_back); "
            "restart participants still running"
        )


def unsound(path: Path, sha256: str | None) -> str | None:
    """Why the checkpoint ``path`` cannot be gone on from (None: it can): missing, not the
    file the ledger recorded (``sha256``; None: not recorded, version 0), or unreadable."""
    if not path.is_file():
        return f"checkpoint {path.name} is missing"
    try:
        map_checkpoint(path)
        load_optimizer_state(path)
    except CheckpointError as exc:
        return f"checkpoint {path.name} cannot be read ({exc.why})"
    if sha256 is not None and file_sha256(path) != sha256:
        return f"checkpoint {path.name} does not match the sha256 the ledger recorded"
    return None


def roll_back_to_last_good(folder: Path, ledger: UpdateLedger) -> RolledBack | None:
    """Roll the state dir ``folder`` back to its newest sound version, if its newest is
    not; None when there is nothing to roll back. Blocking; the state dir must be held."""
    models = folder / "models"
    recorded = ledger.checkpoint_digests()
    if not recorded:
        return None
    why: str | None = None
    good = 0
    for version, checkpoint, sha256 in recorded:
        problem = unsound(models / Path(checkpoint).name, sha256)
        if problem is None:
            good = version
            break
        why = why or problem
    if why is None:
        return None
    last = recorded[0][0]
    aside = _new_folder(folder)
    # The ledger as it was, before anything changes: what an audit of the damage reads.
    ledger.backup(aside / "ledger-before-rollback.sqlite")
    (aside / "models").mkdir()
    for version, path in checkpoint_versions(models).items():
        if version > good:
            os.replace(path, aside / "models" / path.name)
    detail = f"rolled back to v{good} by --from-last-good: v{last}'s {why}"
    updates = ledger.roll_back(good, detail)
    done = RolledBack(good, last, aside, updates, why)
    log.warning("%s", done.describe(), extra={"event": "rolled_back", "version": good})
    return done


def _new_folder(folder: Path) -> Path:
    """``damaged-<UTC time>`` in ``folder``, made now (a suffix if that second has one)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(100):
        aside = folder / f"{DAMAGED_PREFIX}{stamp}{f'-{n}' if n else ''}"
        try:
            aside.mkdir()
        except FileExistsError:
            continue
        return aside
    raise FileExistsError(f"{folder}/{DAMAGED_PREFIX}{stamp}-*")
