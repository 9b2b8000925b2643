"""Model checkpoints: one ``.npz`` per committed version, written atomically.

A checkpoint holds the model and the server optimizer's state (momentum, moments) after
that version, so a restarted coordinator continues exactly where the ledger says it was.
Write to a temporary file in the same folder (:func:`stage_checkpoint`), fsync it,
``os.replace`` it into place and fsync the folder (:func:`commit_checkpoint`): after a
crash a checkpoint is either whole or absent, never torn. The coordinator serves and
publishes the staged file while the commit runs beside it.

The coordinator serves the current model from its checkpoint, not from RAM
(:func:`map_checkpoint`): ``np.savez`` stores each tensor uncompressed, so a tensor is a
read-only memory map of its bytes in the file, and :func:`release_pages` hands the pages
read so far back to the page cache. What the coordinator holds of a version is then its
accumulator, not also the model the accumulator is added to.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from fedq.messages.codec import Weights


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read (missing, truncated, not one fedq wrote); the message
    names the file and says what to do."""

    def __init__(self, path: Path, why: str, todo: str | None = None) -> None:
        todo = todo or (
            f"restore it from a backup; `fedq audit --state-dir {path.parent.parent}` checks "
            "every checkpoint"
        )
        super().__init__(f"checkpoint {path} cannot be read ({why}): {todo}")
        self.path = path
        #: What the reader raised, e.g. ``BadZipFile: File is not a zip file``.
        self.why = why


#: What reading a damaged ``.npz`` raises: zipfile, numpy's header parser, a missing member.
_DAMAGED = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn whatever a damaged or missing checkpoint raises into a :class:`CheckpointError`."""
    try:
        yield
    except _DAMAGED as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise CheckpointError(path, why) from None


def checkpoint_path(folder: Path, version: int) -> Path:
    return folder / f"model-v{version:06d}.npz"


_CHECKPOINT_NAME = re.compile(r"model-v(\d+)\.npz")
#: A staged checkpoint's file name: ``.model-<random>.tmp``.
_STAGED_PREFIX, _STAGED_SUFFIX = ".model-", ".tmp"


def checkpoint_versions(folder: Path) -> dict[int, Path]:
    """The checkpoints in ``folder`` (as :func:`checkpoint_path` names them) by version."""
    found = {}
    for path in folder.glob("model-v*.npz"):
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match is not None:
            found[int(match.group(1))] = path
    return found


def save_checkpoint(
    folder: Path, version: int, weights: Weights, state: Mapping[str, np.ndarray] | None = None
) -> Path:
    """Write version ``version``'s checkpoint durably; returns its path."""
    staged = stage_checkpoint(folder, weights, state)
    return commit_checkpoint(staged, folder, version, hashed=False)[0]


def stage_checkpoint(
    folder: Path, weights: Weights, state: Mapping[str, np.ndarray] | None = None
) -> Path:
    """A checkpoint written to a temporary file in ``folder``: neither durable nor in place
    yet, but its tensors can be mapped (:func:`map_checkpoint`) and served at once, while
    :func:`commit_checkpoint` makes it durable. A coordinator that dies before that leaves
    the file, which the next start removes (:func:`remove_staged`)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_STAGED_PREFIX, suffix=_STAGED_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            # Positional keys keep the model's order; names travel alongside (a tensor name
            # may hold any character, so none is used as a key).
            state = dict(state or {})
            arrays: dict[str, Any] = {f"arr_{i}": w for i, w in enumerate(weights.values())}
            arrays |= {f"state_{i}": a for i, a in enumerate(state.values())}
            arrays["__names__"] = np.array(list(weights), dtype=str)
            arrays["__state_names__"] = np.array(list(state), dtype=str)
            _savez(f, arrays)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


#: How much of a tensor :func:`_write_npy` hands the zip file at a time.
_WRITE_BLOCK = 1 << 20


def _savez(file: BinaryIO, arrays: Mapping[str, Any]) -> None:
    """What ``np.savez(file, **arrays)`` writes (the same zip of ``.npy`` members, stored,
    zip64), without its copies: numpy writes an array to a zip member in ``tobytes``
    copies of 16 MiB, each a fresh mapping faulted in, and the coordinator's peak memory
    at 10M parameters was met while one was made (bench/README.md, "Where a round's time
    goes", 2026-12-07 on an AMD EPYC)."""
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for key, value in arrays.items():
            with z.open(f"{key}.npy", "w", force_zip64=True) as member:
                _write_npy(member, np.asanyarray(value))


def _write_npy(member: IO[bytes], array: np.ndarray) -> None:
    """``np.lib.format.write_array`` of a C-ordered array, its bytes handed over a block at
    a time as views (no copy); any other array as numpy writes it."""
    if array.dtype.hasobject or not array.flags.c_contiguous:
        np.lib.format.write_array(member, array, allow_pickle=False)
        return
    header = np.lib.format.header_data_from_array_1_0(array)
    try:
        np.lib.format.write_array_header_1_0(member, header)
    except ValueError:  # a header past version 1.0's 64 KiB
        np.lib.format.write_array_header_2_0(member, header)
    values = array.reshape(-1).view(np.uint8)
    for start in range(0, values.size, _WRITE_BLOCK):
        member.write(values[start : start + _WRITE_BLOCK].data)


def commit_checkpoint(
    staged: Path, folder: Path, version: int, *, hashed: bool = True
) -> tuple[Path, str | None]:
    """A staged checkpoint made durable as version ``version``'s: fsynced, renamed into
    place, the folder fsynced, so that after a crash it is whole or absent, never torn.
    With ``hashed``, also the sha256 of the file, hashed from the page cache while the
    fsync waits on the disk, in a thread of its own (both let the GIL go)."""
    target = checkpoint_path(folder, version)
    sha256 = None
    try:
        fd = os.open(staged, os.O_RDONLY)
        try:
            if hashed:
                with ThreadPoolExecutor(1, thread_name_prefix="fedq-checkpoint-hash") as hasher:
                    digest = hasher.submit(file_sha256, staged)
                    os.fsync(fd)
                    sha256 = digest.result()
            else:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staged, target)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target, sha256


def remove_staged(folder: Path) -> int:
    """Remove the staged checkpoints a coordinator that died left in ``folder`` (never
    committed, so nothing points at them); returns how many."""
    removed = 0
    for path in folder.glob(f"{_STAGED_PREFIX}*{_STAGED_SUFFIX}"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_checkpoint(path: Path) -> Weights:
    """The model of a checkpoint (:class:`CheckpointError` if it cannot be read)."""
    with _reading(path), np.load(path, allow_pickle=False) as data:
        names = [str(n) for n in data["__names__"]]
        return {name: data[f"arr_{i}"] for i, name in enumerate(names)}


def load_optimizer_state(path: Path) -> dict[str, np.ndarray]:
    """The server optimizer's state saved with a checkpoint (empty if it had none)."""
    with _reading(path), np.load(path, allow_pickle=False) as data:
        if "__state_names__" not in data:
            return {}
        names = [str(n) for n in data["__state_names__"]]
        return {name: data[f"state_{i}"] for i, name in enumerate(names)}


#: A zip member's local header: signature ... file name length, extra field length.
_LOCAL_HEADER = struct.Struct("<4s22xHH")


def map_checkpoint(path: Path) -> Weights:
    """The model of a checkpoint as read-only memory maps of the file (no copy in RAM).
    A checkpoint made otherwise than by :func:`save_checkpoint` (a compressed member) is
    loaded instead; one that cannot be read is a :class:`CheckpointError`."""
    with _reading(path):
        return _map_checkpoint(path)


def _map_checkpoint(path: Path) -> Weights:
    with zipfile.ZipFile(path) as archive:
        if any(i.compress_type != zipfile.ZIP_STORED for i in archive.infolist()):
            return load_checkpoint(path)
        names = [str(n) for n in np.load(archive.open("__names__.npy"), allow_pickle=False)]
        members = [archive.getinfo(f"arr_{i}.npy") for i in range(len(names))]
    weights: Weights = {}
    with open(path, "rb") as f:
        for name, member in zip(names, members, strict=True):
            f.seek(member.header_offset)
            signature, name_length, extra_length = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            if signature != b"PK\x03\x04":
                raise ValueError(f"{path}: not a zip member at {member.header_offset}")
            f.seek(name_length + extra_length, os.SEEK_CUR)
            major, _ = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            if fortran or dtype.hasobject:
                return load_checkpoint(path)
            if 0 in shape:
                weights[name] = np.zeros(shape, dtype)
            else:
                weights[name] = np.memmap(path, dtype, "r", offset=f.tell(), shape=shape)
    return weights


def release_pages(arrays: Iterable[np.ndarray]) -> None:
    """Drop the pages of mapped tensors (:func:`map_checkpoint`) from this process: they
    stay in the page cache, and a later read maps them again. Other arrays are left alone."""
    for array in arrays:
        mapping = getattr(array, "_mmap", None)
        if isinstance(mapping, mmap.mmap) and not mapping.closed:
            mapping.madvise(mmap.MADV_DONTNEED)
