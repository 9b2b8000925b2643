"""Each participant's latest folded update, on disk: CA2FL's cache (``--async-remedy cached``).

One flat float32 file per participant and version, ``<hex id>.v<version>.w<weight>.npy``
under ``<state dir>/local-models``: the local model a participant's update folded into
``version`` produced, its base model plus its delta (the tensors in the model's order; the
calibration takes it from the current model, :func:`.strategies.remedies.calibration`),
and its example weight. The base model is the checkpoint of the update's base version,
which the state dir keeps; where it was deleted, the model the version is made on stands
in (a warning says so). A participant's base is the model as published: with a lossy
``--codec`` it differs from the checkpoint by the codec's error. In RAM only their weighted sum
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

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedq.coordinator.checkpoint import checkpoint_path, map_checkpoint, release_pages
from fedq.coordinator.strategies.base import DeltaPieces, Weights, blocks
from fedq.coordinator.strategies.remedies import Flat, cached_mean_step, calibration

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<who>[0-9a-f]+)\.v(?P<version>\d+)\.w(?P<weight>[0-9.e+-]+)\.npy$")


@dataclass(frozen=True)
class Entry:
    version: int
    weight: float
    path: Path


class UpdateCache:
    def __init__(self, folder: Path, template: Mapping[str, np.ndarray], models: Path) -> None:
        self.folder = folder
        #: The checkpoints, by version: each update's base model.
        self.models = models
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

    def _flat(self, weights: Mapping[str, np.ndarray]) -> Flat:
        return [(self.offsets[name], weights[name].reshape(-1)) for name, _, _ in self.layout]

    def _base(self, version: int, current: int) -> Weights:
        """Model ``version`` (memory-mapped), or the ``current`` one if its checkpoint is
        gone: its update is then taken as computed on the current model."""
        path = checkpoint_path(self.models, version)
        if not path.exists() and version != current:
            log.warning(
                "%s is gone: an update on v%d is cached as if made on v%d (keep the "
                "checkpoints of the last versions with --async-remedy cached)",
                path,
                version,
                current,
            )
            path = checkpoint_path(self.models, current)
        return map_checkpoint(path)

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
    def stage(
        self, participant: str, version: int, base: int, pieces: DeltaPieces, weight: float
    ) -> None:
        """Write the local model of ``participant``'s update on model ``base`` (its base
        plus its delta), folded into the version making ``version``."""
        path = self._path(participant, version, weight)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(self.size,))
        model = self._base(base, version - 1)
        for offset, values in self._flat(model):
            out[offset : offset + values.size] = values
        release_pages(model.values())
        for name, start, values in pieces:
            at = self.offsets[name] + start
            out[at : at + values.size] += values
        out.flush()
        del out
        previous = self.staged.get(participant)
        if previous is not None and previous.path != path:
            previous.path.unlink(missing_ok=True)
        self.staged[participant] = Entry(version, weight, path)

    def correction(
        self, contributors: Iterable[tuple[str, float, int]], model: Weights, version: int
    ) -> Weights:
        """CA2FL's correction for a version on ``model`` (model ``version``) of
        ``contributors`` (participant, example weight, base version), against the
        committed cache, as tensors shaped like the model."""
        bases = {base: self._base(base, version) for _, _, base in contributors}
        flat = calibration(
            self.sum,
            self.weight,
            [
                (
                    weight,
                    [(0, self._read(self.entries[who]))] if who in self.entries else None,
                    self._flat(bases[base]),
                )
                for who, weight, base in contributors
            ],
            self._flat(model),
        )
        for weights in bases.values():
            release_pages(weights.values())
        return self._shaped(flat)

    def mean_step(self, model: Weights) -> Weights:
        """``cached_mean``'s delta on ``model``: the mean of the committed cache with the
        staged entries (the open version's updates) in their participants' places, minus
        ``model``, as tensors shaped like the model."""
        flat = cached_mean_step(
            self.sum,
            self.weight,
            [
                (entry.weight, [(0, self._read(entry))])
                for who, entry in self.entries.items()
                if who in self.staged
            ],
            [(entry.weight, [(0, self._read(entry))]) for entry in self.staged.values()],
            self._flat(model),
        )
        return self._shaped(flat)

    def _shaped(self, flat: np.ndarray) -> Weights:
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
