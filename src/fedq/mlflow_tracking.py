"""An MLflow run per federation: its settings, one metric point per committed version, and
the final model.

With ``--mlflow-uri URI`` (a tracking server's ``http://host:5000``, a local
``sqlite:///mlflow.db`` ...), ``fedq coordinator`` and ``fedq simulate`` open a run named
after the federation in the experiment ``--mlflow-experiment`` (default: the federation's
name) and log:

- params: the coordinator's settings (:class:`~fedq.coordinator.config.CoordinatorConfig`:
  mode, participants, rounds, quorum, aggregator, server optimizer, privacy ...) and, in a
  simulation, the participants' training settings;
- metrics at step = the committed model version, all read from the
  :class:`~fedq.coordinator.records.VersionSummary` the ledger stores, so that they equal
  ``fedq history --json``: the app's held-out evaluation under its own names (``accuracy``,
  ``loss``), ``updates``, ``participants`` (distinct senders), ``staleness_mean``,
  ``staleness_max``, ``rejected`` (refusals, duplicates not counted), ``seconds``,
  ``update_bytes``, ``epsilon`` with differential privacy, and the participants'
  example-weighted training metrics as ``local/<name>``;
- tags: ``fedq.federation``, ``fedq.version``, ``fedq.mode``, ``fedq.state_dir`` (absolute);
- one run per federation: a coordinator that resumes one (a restart, a standby taking
  over) goes on with the newest run of its state dir, as a TensorBoard run is appended to;
  a setting it changed cannot be a param again (MLflow's params are immutable) and is the
  tag ``fedq.resumed_with.<name>``;
- at the end, artifacts under ``model/``: the last committed checkpoint (``.npz``) and, if
  the app can export one, the whole model as a ``.keras`` file.

Every MLflow call is blocking I/O (HTTP, SQLite, files). The hooks only queue small jobs
for one writer thread, in order, so the event loop never waits on the tracking server.
Tracking never stops a federation: the first failure is one warning line, after which the
run is given up (a tracking server that is down would otherwise cost every later call its
retries); closing waits for the writer at most :data:`CLOSE_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yarl

from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.coordinator.config import ConfigError, CoordinatorConfig
from fedq.coordinator.ledger_view import LedgerView
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.records import VersionSummary
from fedq.participant.config import ParticipantConfig

log = logging.getLogger("fedq.mlflow")

#: How long closing waits for the writer to log what is queued and end the run.
CLOSE_SECONDS = 60.0
#: The writer thread's name: the HTTP client's own retry warnings from it are dropped.
WRITER = "fedq-mlflow"
#: The logger of urllib3 (under MLflow's HTTP client) that warns at every retry.
RETRIES_LOGGER = "urllib3.connectionpool"


def _not_from_writer(record: logging.LogRecord) -> bool:
    """A retry warning of the writer's is one more line per retry of a server that is down:
    the writer's own warning says it once."""
    return record.threadName != WRITER


_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
Job = Callable[[], None]


def shown(uri: str) -> str:
    """``uri`` as messages show it: its password, if any, starred. Otherwise untouched
    (a URL parser would make ``sqlite:///m.db`` of ``sqlite:/m.db``)."""
    try:
        parsed = yarl.URL(uri)
    except (ValueError, TypeError):
        return "<unparseable URI>"
    return str(parsed.with_password("***")) if parsed.password else uri


def metric_name(name: str) -> str:
    """A metric name MLflow takes as one path segment: a participant's metric names come
    off the wire, and a ``/`` or ``..`` would make a path of them in a file store."""
    safe = _UNSAFE.sub("_", name)
    return safe if safe.strip(".") else "_"


def version_metrics(row: VersionSummary) -> dict[str, float]:
    """What one committed version logs, every value taken from the ledger's record."""
    metrics = {metric_name(k): float(v) for k, v in row.metrics.items()}
    staleness = [tau for _, _, tau in row.updates]
    metrics |= {
        "updates": float(row.n_updates),
        "participants": float(len(set(row.participants))),
        "rejected": float(sum(n for reason, n in row.rejected.items() if reason != "duplicate")),
        "seconds": float(row.seconds),
        "update_bytes": float(row.update_bytes),
    }
    if staleness:
        metrics["staleness_mean"] = sum(staleness) / len(staleness)
        metrics["staleness_max"] = float(max(staleness))
    if row.epsilon is not None:
        metrics["epsilon"] = float(row.epsilon)
    metrics |= {f"local/{metric_name(k)}": float(v) for k, v in row.local_metrics.items()}
    return metrics


def coordinator_params(config: CoordinatorConfig) -> dict[str, str]:
    """The coordinator's settings as MLflow params (strings; nested options as JSON)."""
    return {k: str(v) for k, v in config.model_dump(mode="json").items()}


def run_params(participant: ParticipantConfig) -> dict[str, str]:
    """A simulation's participant settings as MLflow params: how they split the data, what
    they send, how they train (``train.<field>``; the app's defaults when unset)."""
    params = {
        "partition_scheme": str(participant.partition.scheme),
        "update_codec": participant.update_codec,
    }
    if participant.train is not None:
        train = participant.train.model_dump(mode="json")
        params |= {f"train.{k}": str(v) for k, v in train.items()}
    return params


def last_committed(state_dir: Path) -> int:
    """The last version the ledger in ``state_dir`` committed (0: none, or no ledger)."""
    ledger = state_dir / "ledger.sqlite"
    if not ledger.exists():
        return 0
    with LedgerView.open(ledger) as view:
        last = view.last_version()
    return 0 if last is None else last.version


def fedq_version() -> str:
    try:
        return metadata.version("fedq")
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


class MlflowRun(CoordinatorObserver):
    """What one coordinator logs to its federation's MLflow run, through a writer thread
    of its own.

    Construction imports MLflow, makes its client and reads the ledger (blocking: do it off
    the event loop); it raises :class:`ConfigError` when MLflow is missing or the URI is
    not one it knows. The run itself is made (or resumed) by the writer's first job, so an
    unreachable server is a warning, not a refusal to start.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        config: CoordinatorConfig,
        params: Mapping[str, object] | None = None,
        app: object = None,
    ) -> None:
        try:
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("--mlflow-uri needs MLflow: pip install 'fedq[mlflow]'") from None
        # Its only INFO lines, making a new SQLite store's tables, would be the only ones
        # in fedq's output.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        try:
            self._client: Any = MlflowClient(tracking_uri=uri)
        except Exception as exc:  # MlflowException: a scheme it has no store for
            raise ConfigError(f"--mlflow-uri {shown(uri)}: MLflow cannot use it ({exc})") from None
        self._metric, self._param, self._tag = Metric, Param, RunTag
        self.uri, self.experiment, self.config, self.app = uri, experiment, config, app
        self.run_id: str | None = None
        self._state_dir = str(config.state_dir.resolve())
        #: The version the ledger had committed when this coordinator started: above 0, it
        #: resumes a federation, and goes on with the run its predecessor logged.
        self.resumes_from = last_committed(config.state_dir)
        extra = {k: str(v) for k, v in (params or {}).items()}
        self._params = coordinator_params(config) | extra
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._failed = False
        logging.getLogger(RETRIES_LOGGER).addFilter(_not_from_writer)
        self._writer = threading.Thread(target=self._write, name=WRITER, daemon=True)
        self._writer.start()
        self._jobs.put(self._start)

    # ------------------------------------------------------------ the writer thread
    def _write(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._failed:
                continue
            try:
                job()
            except Exception as exc:
                self._failed = True
                log.warning(
                    "MLflow tracking at %s failed, the federation goes on without it: %s",
                    shown(self.uri),
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )

    def _start(self) -> None:
        client = self._client
        experiment_id = self._experiment_id()
        run = self._resumable(experiment_id) if self.resumes_from else None
        tags = {
            "fedq.federation": self.config.federation,
            "fedq.version": fedq_version(),
            "fedq.mode": self.config.mode,
            "fedq.state_dir": self._state_dir,
        }
        if run is None:
            run = client.create_run(experiment_id, run_name=self.config.federation, tags=tags)
            logged: dict[str, str] = {}
        else:  # a restarted (or standby) coordinator goes on with its federation's run
            client.update_run(run.info.run_id, status="RUNNING")
            logged = dict(run.data.params)
            tags = {"fedq.version": tags["fedq.version"]}
        self.run_id = run.info.run_id
        # A param cannot change once logged: a setting a restart changed is a tag instead.
        params = {k: v for k, v in self._params.items() if k not in logged}
        changed = {k: v for k, v in self._params.items() if k in logged and logged[k] != v}
        tags |= {f"fedq.resumed_with.{k}": v for k, v in changed.items()}
        client.log_batch(
            self.run_id,
            params=[self._param(k, v) for k, v in sorted(params.items())],
            tags=[self._tag(k, v) for k, v in tags.items()],
        )

    def _experiment_id(self) -> str:
        client, name = self._client, self.experiment
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(client.create_experiment(name))
        except Exception:  # another coordinator made it meanwhile
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _resumable(self, experiment_id: str) -> Any:
        """The newest run of this federation's state dir in the experiment, if any. A
        federation's name is letters, digits, ``_`` and ``-``: safe in the filter."""
        runs = self._client.search_runs(
            [experiment_id],
            filter_string=f"tags.`fedq.federation` = '{self.config.federation}'",
            order_by=["attributes.start_time DESC"],
        )
        mine = [r for r in runs if r.data.tags.get("fedq.state_dir") == self._state_dir]
        return mine[0] if mine else None

    def _log_metrics(self, step: int, metrics: dict[str, float], at: int) -> None:
        batch = [self._metric(k, v, at, step) for k, v in metrics.items()]
        self._client.log_batch(self.run_id, metrics=batch)

    def _finish(self, status: str) -> None:
        """The final model as artifacts, then the run's end."""
        model = self._final_checkpoint()
        if model is not None:
            self._client.log_artifact(self.run_id, str(model), "model")
            self._log_keras(model)
        self._client.set_terminated(self.run_id, status)

    def _final_checkpoint(self) -> Path | None:
        """The checkpoint of the last version the ledger committed (None: none yet)."""
        last = last_committed(self.config.state_dir)
        if last == 0:
            return None
        path = checkpoint_path(self.config.state_dir / "models", last)
        return path if path.exists() else None

    def _log_keras(self, checkpoint: Path) -> None:
        """The model as a ``.keras`` file, if the app exports one; an app that fails to is
        a warning of its own (the run still ends)."""
        export = getattr(self.app, "export", None)
        if not callable(export):
            return
        with tempfile.TemporaryDirectory(prefix="fedq-mlflow-") as folder:
            target = Path(folder) / f"{checkpoint.stem}.keras"
            try:
                export(load_checkpoint(checkpoint), target)
            except Exception as exc:
                log.warning("MLflow: the app could not export %s as .keras: %s", checkpoint, exc)
                return
            self._client.log_artifact(self.run_id, str(target), "model")

    # ------------------------------------------------------------ hooks (event loop)
    def version_committed(self, row: VersionSummary) -> None:
        at = int(time.time() * 1000)
        self._jobs.put(lambda: self._log_metrics(row.version, version_metrics(row), at))

    def close(self, status: str = "FINISHED", timeout: float = CLOSE_SECONDS) -> bool:
        """Log the final model, end the run with ``status`` (FINISHED, FAILED, KILLED) and
        stop the writer; blocks up to ``timeout`` seconds. True if everything was logged."""
        self._jobs.put(lambda: self._finish(status))
        self._jobs.put(None)
        self._writer.join(timeout)
        if self._writer.is_alive():
            log.warning(
                "MLflow tracking at %s: gave up after %.0f s; the run may lack its last "
                "metrics and the model",
                shown(self.uri),
                timeout,
            )
            return False  # the filter stays: the writer may still be retrying
        logging.getLogger(RETRIES_LOGGER).removeFilter(_not_from_writer)
        return not self._failed


@contextlib.asynccontextmanager
async def mlflow_run(
    uri: str,
    experiment: str | None,
    config: CoordinatorConfig,
    params: Mapping[str, object] | None = None,
    app: object = None,
) -> AsyncIterator[MlflowRun]:
    """An :class:`MlflowRun` for the block, made and closed off the event loop; its status
    says how the block ended (FINISHED, FAILED, or KILLED when cancelled or interrupted)."""
    run = await asyncio.to_thread(
        MlflowRun, uri, experiment or config.federation, config, params, app
    )
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except (asyncio.CancelledError, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        await asyncio.shield(asyncio.to_thread(run.close, status))
