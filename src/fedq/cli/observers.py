"""What watches a coordinator that ``fedq coordinator`` and ``fedq simulate`` run: the live
view always, Prometheus metrics, TensorBoard scalars and an MLflow run when their settings
ask. Those
settings belong to the observers, not to the coordinator (which only calls them): they are
:class:`ObserverSettings`, flags, ``FEDQ_*`` variables and ``--config`` keys of both
commands (:mod:`fedq.options`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fedq.console import RoundProgress
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.observers import CoordinatorObserver
from fedq.metrics import PrometheusMetrics, serve_metrics
from fedq.mlflow_tracking import mlflow_run, shown
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
    mlflow_uri: str | None = Field(
        None,
        description="Log an MLflow run to this tracking URI (http://host:5000, "
        "sqlite:///mlflow.db): the settings, each version's metrics, the final model.",
    )
    mlflow_experiment: str | None = Field(
        None,
        min_length=1,
        description="The MLflow experiment of the run.",
        json_schema_extra={"shown_default": "the federation's name"},
    )


@contextlib.asynccontextmanager
async def watching(
    settings: ObserverSettings,
    config: CoordinatorConfig,
    progress: RoundProgress | None,
    app: object = None,
    params: Mapping[str, object] | None = None,
) -> AsyncIterator[list[CoordinatorObserver]]:
    """The observers of the coordinator ``config`` describes: the live view (None: none, as
    in the Python API, which logs where the others are instead), Prometheus metrics served
    at /metrics while it runs when --metrics-port is set, TensorBoard scalars when
    --tensorboard-dir is, an MLflow run when --mlflow-uri is (with ``params`` beside the
    coordinator's settings, and the final model exported by ``app`` if it can)."""
    federation = config.federation
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
        if settings.mlflow_uri is not None:
            tracking = await stack.enter_async_context(
                mlflow_run(settings.mlflow_uri, settings.mlflow_experiment, config, params, app)
            )
            say(f"MLflow run of experiment {tracking.experiment!r} at {shown(tracking.uri)}")
            observers.append(tracking)
        yield observers
