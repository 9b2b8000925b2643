"""Each participant's latest folded update, on disk: CA2FL's cache (``--async-remedy cached``).

One flat float32 file per participant and version, ``<hex id>.v<version>.w<weight>.npy``
under ``<state dir>/update-cache``: the update a participant had folded into ``version``
(the tensors in the model's order) and its example weight. In RAM only their weighted sum
(one model of float32) and each participant's newest (version, weight); an entry is read
back (memory-mapped) only when its participant contributes again. So memory is one model
however many participants, and the disk holds one update per participant (two for a
participant between a fold and the commit that retires its older entry).

Consistent with the checkpoint and the ledger without a journal of its own: an update is
written when it is folded, under the version being made, before that version's commit;
the older entry of its participant is deleted only after the commit. A coordinator
restarted at model V (the ledger's last version) takes, per participant, the newest file of
a version <= V and deletes those above V (a version that was never committed), then sums
them again: exactly the cache the committed history made. After ``--from-last-good`` rolls
back, an entry the newer versions already retired is gone: that participant's cache starts
again empty (its next update fills it), as for a participant not heard yet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedq.coordinator.strategies.base import DeltaPieces, Weights, blocks
from fedq.coordinator.strategies.remedies import calibration

_NAME = re.compile(r"^(?P<who>[0-9a-f]+)\.v(?P<version>\d+)\.w(?P<weight>[0-9.e+-]+)\.npy$")


@dataclass(frozen=True)
class Entry:
    version: int
    weight: float
    path: Path


class UpdateCache:
    def __init__(self, folder: Path, template: Mapping[str, np.ndarray]) -> None:
        self.folder = folder
        #: (name, flat offset, shape) of each tensor, in the model's order.
        self.layout: list[tuple[str, int, tuple[int, ...]]] = []
        offset = 0
        for name, tensor in template.items():
            self.layout.append((name, offset, tuple(tensor.shape)))
            offset += int(tensor.size)
        self.size = offset
        self.offsets = {name: start for name, start, _ in self.layout}
        self.sum = np.zeros(self.size, dtype=np.float32)
        self.weight = 0.0
        #: participant -> its newest committed entry.
        self.entries: dict[str, Entry] = {}
        #: participant -> the entry folded into the version being made (not committed).
        self.staged: dict[str, Entry] = {}

    # ----------------------------------------------------------------- files
    def _path(self, participant: str, version: int, weight: float) -> Path:
        return self.folder / f"{participant.encode().hex()}.v{version}.w{weight!r}.npy"

    def _files(self) -> Iterable[tuple[str, Entry]]:
        for path in self.folder.glob("*.npy"):
            match = _NAME.match(path.name)
            if match is None:
                continue
            who = bytes.fromhex(match["who"]).decode()
            yield who, Entry(int(match["version"]), float(match["weight"]), path)

    def _read(self, entry: Entry) -> np.ndarray:
        values: np.ndarray = np.load(entry.path, mmap_mode="r")
        assert values.shape == (self.size,), f"{entry.path} is not of this model"
        return values

    # --------------------------------------------------------------- restore
    def restore(self, version: int) -> None:
        """The cache as committed up to model ``version``: entries of later (never
        committed) versions and entries superseded before it are deleted."""
        self.folder.mkdir(parents=True, exist_ok=True)
        newest: dict[str, Entry] = {}
        for who, entry in list(self._files()):
            if entry.version > version:
                entry.path.unlink(missing_ok=True)
            elif who not in newest or entry.version > newest[who].version:
                if who in newest:
                    newest[who].path.unlink(missing_ok=True)
                newest[who] = entry
            else:
                entry.path.unlink(missing_ok=True)
        self.entries, self.staged = newest, {}
        self.sum[:] = 0
        self.weight = 0.0
        for entry in newest.values():
            self._add(entry.weight, entry)
            self.weight += entry.weight

    def _add(self, factor: float, entry: Entry) -> None:
        """sum += factor x the entry's update, a block at a time (no model-sized scratch)."""
        scale = np.float32(factor)
        for start, block in blocks(self._read(entry)):
            self.sum[start : start + block.size] += scale * block

    # ------------------------------------------------------- the open version
    def stage(self, participant: str, version: int, pieces: DeltaPieces, weight: float) -> None:
        """Write ``participant``'s update, folded into the version making ``version``."""
        path = self._path(participant, version, weight)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(self.size,))
        for name, start, values in pieces:
            at = self.offsets[name] + start
            out[at : at + values.size] = values
        out.flush()
        del out
        previous = self.staged.get(participant)
        if previous is not None and previous.path != path:
            previous.path.unlink(missing_ok=True)
        self.staged[participant] = Entry(version, weight, path)

    def correction(self, contributors: Iterable[tuple[str, float]]) -> Weights:
        """CA2FL's correction for a version of ``contributors`` (participant, example
        weight), against the committed cache, as tensors shaped like the model."""
        flat = calibration(
            self.sum,
            self.weight,
            [
                (weight, self._read(self.entries[who]) if who in self.entries else None)
                for who, weight in contributors
            ],
        )
        return {name: flat[start : start + int(np.prod(shape))].reshape(shape)
                for name, start, shape in self.layout}  # fmt: skip

    def commit(self) -> None:
        """The version was committed: its staged updates replace their participants'
        entries (the older files are deleted now; a crash before leaves them to
        :meth:`restore`, which keeps the newest)."""
        for who, entry in self.staged.items():
            old = self.entries.get(who)
            if old is not None:
                self._add(-old.weight, old)
                self.weight -= old.weight
            self._add(entry.weight, entry)
            self.weight += entry.weight
            self.entries[who] = entry
            if old is not None and old.path != entry.path:
                old.path.unlink(missing_ok=True)
        self.staged = {}
