"""``--mlflow-uri``: an MLflow run per coordinator, read back with MLflow's own client; a
tracking server that fails is one warning and the federation goes on; MLflow missing is one
line saying what to install."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

import fedq
from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.records import VersionSummary
from fedq.mlflow_tracking import MlflowRun, metric_name, shown, version_metrics
from fedq.teardown import teardown
from tests.broker_users import MANAGEMENT_URL
from tests.conftest import BROKER_URL
from tests.helpers import FEDQ, fedq_env, free_port

pytestmark = [pytest.mark.broker, pytest.mark.processes]


def run_in(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``fedq ARGS`` run in ``cwd``: MLflow keeps a SQLite store's artifacts in ./mlruns."""
    return subprocess.run(
        [*FEDQ, *args], capture_output=True, text=True, timeout=600, cwd=cwd,
        env=fedq_env() | (env or {}),
    )  # fmt: skip


@pytest.mark.keras
@pytest.mark.broker
def test_simulate_logs_settings_a_point_per_version_and_the_final_model(tmp_path, federation):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_in(
        "simulate", "--app", "fedq.apps.dense:app", "-n", "2", "--rounds", "2",
        "--broker", BROKER_URL, "--federation", federation, "--state-dir", str(tmp_path),
        "--quorum", "2", "--learning-rate", "0.05", "--mlflow-uri", store,
        "--mlflow-experiment", "fedq-tests", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"MLflow run of experiment 'fedq-tests' at {store}\n" in result.stderr
    assert " INFO " not in result.stderr  # MLflow's lines on making the store's tables

    client = MlflowClient(tracking_uri=store)
    [run] = runs_of(client, "fedq-tests")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == federation
    tags = run.data.tags
    assert tags["fedq.federation"] == federation and tags["fedq.mode"] == "quorum"
    assert tags["fedq.version"]
    params = run.data.params
    assert (params["mode"], params["participants"], params["rounds"]) == ("quorum", "2", "2")
    assert (params["quorum"], params["aggregator"], params["train.learning_rate"]) == (
        "2", "mean", "0.05",
    )  # fmt: skip

    history = history_json(tmp_path / federation)
    assert [row["version"] for row in history] == [1, 2]

    def series(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    for key in ("accuracy", "loss"):
        points = series(key)
        assert [step for step, _ in points] == [1, 2]  # one point per version
        expected = [row["metrics"][key] for row in history]
        assert [value for _, value in points] == pytest.approx(expected, rel=1e-6)
    assert series("updates") == [(1, 2.0), (2, 2.0)]
    assert series("participants") == [(1, 2.0), (2, 2.0)]
    assert series("staleness_max") == [(1, 0.0), (2, 0.0)]
    assert [step for step, _ in series("local/loss")] == [1, 2]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert artifacts == {"model/model-v000002.npz", "model/model-v000002.keras"}


def runs_of(client: MlflowClient, experiment: str) -> list[Any]:
    """The runs of ``experiment``, which must exist."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return list(client.search_runs([found.experiment_id]))


def history_json(state_dir: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [*FEDQ, "history", "--state-dir", str(state_dir), "--json"],
        capture_output=True, text=True, timeout=120, env=fedq_env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rounds: list[dict[str, Any]] = json.loads(out.stdout)["rounds"]
    return rounds


@pytest.mark.broker
async def test_a_coordinator_on_rabbitmq_logs_its_run_too(tmp_path, federation, monkeypatch):
    """``fedq coordinator``'s path (``fedq.run_coordinator``), with an app that cannot export
    a .keras file: the checkpoint alone is the model."""
    monkeypatch.chdir(tmp_path)  # MLflow keeps a SQLite store's artifacts in ./mlruns
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    app = SyntheticApp(params=8)
    coordinator = asyncio.create_task(
        fedq.run_coordinator_async(
            app, federation, 2, 2, broker_url=BROKER_URL, state_dir=tmp_path, mlflow_uri=store
        )
    )
    participants = [
        fedq.run_participant_async(app, federation, f"p{i}", broker_url=BROKER_URL)
        for i in range(2)
    ]
    try:
        await asyncio.gather(*participants)
        result = await coordinator
    finally:
        coordinator.cancel()
        await teardown(federation, BROKER_URL, MANAGEMENT_URL, force=True)
    client = MlflowClient(tracking_uri=store)
    [run] = runs_of(client, federation)
    assert run.info.status == "FINISHED"
    assert (run.data.params["participants"], run.data.params["mode"]) == ("2", "quorum")
    assert "train.epochs" not in run.data.params  # a coordinator knows no training settings
    points = client.get_metric_history(run.info.run_id, "updates")
    assert sorted((m.step, m.value) for m in points) == [
        (h["version"], float(h["n_updates"])) for h in result.history
    ]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert artifacts == {"model/model-v000002.npz"}


def test_a_resumed_federation_goes_on_with_its_run_and_a_new_one_gets_its_own(tmp_path):
    """Two runs of ``fedq simulate`` on one state dir: the second resumes the federation at
    v2 with one more version (and a setting changed); a fresh state dir is a new run."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def simulate(state_dir: str, rounds: int, timeout: str) -> None:
        result = run_in(
            "simulate", "--app", "fedq.apps.synthetic:app", "-n", "2", "-r", str(rounds),
            "--federation", "again", "--state-dir", state_dir, "--round-timeout", timeout,
            "--mlflow-uri", store, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]

    simulate(str(tmp_path / "state"), 2, "60")
    simulate(str(tmp_path / "state"), 3, "30")
    client = MlflowClient(tracking_uri=store)
    [run] = runs_of(client, "again")
    assert run.info.status == "FINISHED"
    assert run.data.params["rounds"] == "2"  # as first logged
    assert run.data.tags["fedq.resumed_with.rounds"] == "3"
    assert run.data.tags["fedq.resumed_with.round_timeout"] == "30.0"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "updates"))
    assert steps == [1, 2, 3]
    models = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/model-v000003.npz" in models

    simulate(str(tmp_path / "elsewhere"), 1, "60")
    assert len(runs_of(client, "again")) == 2


def test_a_tracking_server_that_fails_is_one_warning_and_the_federation_goes_on(tmp_path):
    """Nothing listens at the URI (set through its FEDQ_* variable): every call fails."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = run_in(
        "simulate", "--app", "fedq.apps.synthetic:app", "-n", "2", "--rounds", "2",
        "--state-dir", str(tmp_path),
        cwd=tmp_path, env={"FEDQ_MLFLOW_URI": nowhere, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "round 2: model v2 from 2 updates" in result.stderr  # the live view's line
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, result.stderr
    assert "failed, the federation goes on without it" in warnings[0]
    assert "Traceback" not in result.stderr


def test_mlflow_missing_is_one_line_saying_what_to_install(tmp_path):
    """An ``mlflow`` package that cannot be imported, first on the path, stands for none."""
    shadow = tmp_path / "shadow" / "mlflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no mlflow here')\n")
    result = run_in(
        "simulate", "--app", "fedq.apps.synthetic:app", "-n", "1", "--rounds", "1",
        "--state-dir", str(tmp_path / "state"), "--mlflow-uri", "sqlite:///x.db",
        cwd=tmp_path, env={"PYTHONPATH": str(shadow.parent)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'fedq[mlflow]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_metrics_come_from_the_ledgers_record_and_names_stay_one_segment():
    row = VersionSummary(
        version=3, round=3, closed_by="quorum", n_updates=3, participants=["a", "a", "b"],
        rejected={"duplicate": 2, "stale": 1}, seconds=1.5, metrics={"accuracy": 0.75},
        updates=[("a", 2, 0), ("a", 1, 1), ("b", 0, 2)], epsilon=0.5, update_bytes=30,
        local_metrics={"loss": 0.25, "../x": 1.0},
    )  # fmt: skip
    assert version_metrics(row) == {
        "accuracy": 0.75, "updates": 3.0, "participants": 2.0, "rejected": 1.0,
        "seconds": 1.5, "update_bytes": 30.0, "staleness_mean": 1.0, "staleness_max": 2.0,
        "epsilon": 0.5, "local/loss": 0.25, "local/.._x": 1.0,
    }  # fmt: skip
    assert metric_name("..") == "_" and metric_name("a/b") == "a_b"


def test_messages_show_a_uri_as_given_but_its_password():
    assert shown("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert shown("https://me:secret@mlflow.example:5000/") == "https://me:***@mlflow.example:5000/"


def test_a_server_that_never_answers_holds_up_neither_the_hooks_nor_the_end(tmp_path, monkeypatch):
    """A socket that listens and never answers: MLflow's first request waits (for its
    120 s timeout), in the writer thread; the hooks only queue, and closing gives up at
    its own bound. Once the socket is gone the request fails and the writer ends: no
    thread of this test goes on retrying into the tests after it."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    config = fedq.CoordinatorConfig(federation="f", participants=1, rounds=3, state_dir=tmp_path)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        run = MlflowRun(f"http://127.0.0.1:{silent.getsockname()[1]}", "e", config)
        for version in (1, 2, 3):
            run.version_committed(summary(version))
        # The hooks returned while the writer still waits on its first request: the three
        # versions' jobs are queued (behind it, or behind the start), none logged.
        assert run._writer.is_alive() and run._jobs.qsize() >= 3
        assert run.close(timeout=1.0) is False
    run._writer.join(60)
    assert not run._writer.is_alive()


def summary(version: int) -> VersionSummary:
    return VersionSummary(
        version=version, round=version, closed_by="quorum", n_updates=1, participants=["a"],
        rejected={}, seconds=0.5, metrics={"accuracy": 0.5},
    )  # fmt: skip
