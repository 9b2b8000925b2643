"""What watches a coordinator that ``fedq coordinator`` and ``fedq simulate`` run: the live
view always, Prometheus metrics and TensorBoard scalars when their settings ask. Those
settings belong to the observers, not to the coordinator (which only calls them): they are
:class:`ObserverSettings`, flags, ``FEDQ_*`` variables and ``--config`` keys of both
commands (:mod:`fedq.options`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fedq.console import RoundProgress
from fedq.coordinator.observers import CoordinatorObserver
from fedq.metrics import PrometheusMetrics, serve_metrics
from fedq.tensorboard import tensorboard_scalars


class ObserverSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve Prometheus metrics on this port at /metrics (0: any free port).",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the metrics endpoint binds (0.0.0.0: every one)."
    )
    tensorboard_dir: Path | None = Field(
        None,
        description="Write TensorBoard scalars to DIR/<federation>, a step per committed "
        "version: held-out loss and accuracy, updates, and each participant's local metrics.",
    )


@contextlib.asynccontextmanager
async def watching(
    settings: ObserverSettings, federation: str, progress: RoundProgress | None
) -> AsyncIterator[list[CoordinatorObserver]]:
    """The coordinator's observers: the live view (None: none, as in the Python API, which
    logs where the others are instead), Prometheus metrics served at /metrics while it runs
    when --metrics-port is set, TensorBoard scalars when --tensorboard-dir is."""
    observers: list[CoordinatorObserver] = [] if progress is None else [progress]
    say: Callable[[str], object] = (
        logging.getLogger("fedq").info if progress is None else progress.progress.console.print
    )
    async with contextlib.AsyncExitStack() as stack:
        if settings.tensorboard_dir is not None:
            board = await stack.enter_async_context(
                tensorboard_scalars(settings.tensorboard_dir, federation)
            )
            say(f"TensorBoard scalars in {board.directory}")
            observers.append(board)
        if settings.metrics_port is not None:
            metrics = PrometheusMetrics(federation)
            url = await stack.enter_async_context(
                serve_metrics(metrics, settings.metrics_host, settings.metrics_port)
            )
            say(f"Prometheus metrics at {url}")
            observers.append(metrics)
        yield observers
