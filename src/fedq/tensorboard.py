"""TensorBoard scalars of a federation: an observer that writes one step per committed version.

Under ``DIR/<federation>`` (one TensorBoard *run* per federation, so ``tensorboard --logdir
DIR`` compares federations side by side), at step = the committed model version:

- ``global/<metric>``: the app's held-out evaluation of the new model (``loss``, ``accuracy``);
- ``version/updates``, ``version/rejected``, ``version/seconds``, ``version/update_bytes``
  and, with differential privacy, ``version/epsilon``;
- ``participant/<id>/<metric>``: each folded update's local training metrics, as it sent
  them (Keras' last-epoch ``loss``, ``accuracy`` ...).

The writer is TensorBoard's own :class:`EventFileWriter` (the one PyTorch's SummaryWriter
uses): it needs no TensorFlow graph or eager context, and it writes from its own thread, so
the hooks only build small protobufs and queue them; they never wait on the disk. Opening
and closing it may (TensorBoard imports TensorFlow when installed, the file is created, the
queue drained): :func:`tensorboard_scalars` does both off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fedq.coordinator.config import ConfigError
from fedq.coordinator.observers import CoordinatorObserver, UpdateSeen
from fedq.coordinator.records import VersionSummary
from fedq.runtime.quiet import native_stderr_silenced

#: Events queued before a hook would wait for the writer thread: far more than a version
#: writes (a few per participant), so the event loop never does.
QUEUE_SIZE = 100_000
#: How soon written scalars reach the file, hence a TensorBoard watching it.
FLUSH_SECONDS = 2.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def _tag_part(name: str) -> str:
    """A participant id or metric name as one tag segment: a ``/`` would nest it deeper."""
    return _UNSAFE.sub("_", name) or "_"


class TensorBoardScalars(CoordinatorObserver):
    """Writes a federation's scalars to event files under ``logdir / federation``.

    Construction blocks (imports, file creation): do it off the event loop. Invariant: an
    update's metrics are written at the version it was folded into, since an update
    accepted after one commit belongs to the next one.
    """

    def __init__(self, logdir: Path, federation: str) -> None:
        try:
            with native_stderr_silenced():  # it loads TensorFlow when installed
                from tensorboard.compat.proto import event_pb2, summary_pb2
                from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            raise ConfigError(
                "--tensorboard-dir needs the tensorboard package: pip install 'fedq[keras]'"
            ) from None
        self.directory = logdir / federation
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--tensorboard-dir {logdir}: cannot write there ({exc})") from None
        self._event = event_pb2.Event
        self._summary = summary_pb2.Summary
        with native_stderr_silenced():
            self._writer: Any = EventFileWriter(
                str(self.directory), max_queue_size=QUEUE_SIZE, flush_secs=FLUSH_SECONDS
            )
        self._folded: list[tuple[str, dict[str, float]]] = []
        self._rejected = 0

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        if not scalars:
            return
        values = [self._summary.Value(tag=t, simple_value=float(v)) for t, v in scalars.items()]
        event = self._event(wall_time=time.time(), step=step, summary=self._summary(value=values))
        self._writer.add_event(event)

    def update_seen(self, update: UpdateSeen) -> None:
        if update.accepted:
            self._folded.append((update.participant or "unknown", dict(update.metrics)))
        elif update.reason != "duplicate":  # a duplicate is acked, not refused
            self._rejected += 1

    def version_committed(self, row: VersionSummary) -> None:
        scalars = {f"global/{_tag_part(k)}": v for k, v in row.metrics.items()}
        scalars |= {
            "version/updates": row.n_updates,
            "version/rejected": self._rejected,
            "version/seconds": row.seconds,
            "version/update_bytes": row.update_bytes,
        }
        if row.epsilon is not None:
            scalars["version/epsilon"] = row.epsilon
        for participant, metrics in self._folded:
            who = _tag_part(participant)
            scalars |= {f"participant/{who}/{_tag_part(k)}": v for k, v in metrics.items()}
        self._folded.clear()
        self._rejected = 0
        self._write(row.version, scalars)

    def close(self) -> None:
        """Write what is queued and close the file (blocks until it is on disk)."""
        self._writer.close()


@contextlib.asynccontextmanager
async def tensorboard_scalars(logdir: Path, federation: str) -> AsyncIterator[TensorBoardScalars]:
    """A :class:`TensorBoardScalars` for the block, opened and closed off the event loop.
    Raises :class:`ConfigError` on entry when ``logdir`` cannot be written or TensorBoard is
    missing, so the CLI says so in one line."""
    board = await asyncio.to_thread(TensorBoardScalars, logdir, federation)
    try:
        yield board
    finally:
        await asyncio.to_thread(board.close)
