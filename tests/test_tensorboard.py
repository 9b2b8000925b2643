"""``--tensorboard-dir``: TensorBoard scalars per committed version, read back with
TensorBoard's own EventAccumulator."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fedq.coordinator.observers import UpdateSeen
from fedq.coordinator.records import VersionSummary
from fedq.tensorboard import TensorBoardScalars
from tests.conftest import BROKER_URL
from tests.helpers import FEDQ, fedq_env, read_report, run_fedq

pytestmark = [pytest.mark.broker, pytest.mark.processes, pytest.mark.keras]


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the event files of ``run``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


@pytest.mark.keras
def test_simulate_writes_global_and_participant_scalars_per_version(tmp_path, federation):
    report, board = tmp_path / "report.json", tmp_path / "tb"
    result = run_fedq(
        "simulate", "--app", "fedq.apps.dense:app", "-n", "2", "--rounds", "2",
        "--broker", BROKER_URL, "--federation", federation, "--state-dir", str(tmp_path),
        "--report", str(report), "--tensorboard-dir", str(board),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = scalars(board / federation)
    history = read_report(report)["history"]
    assert [row["version"] for row in history] == [1, 2]
    for tag in ("accuracy", "loss"):
        steps, values = zip(*found[f"global/{tag}"], strict=True)
        assert steps == (1, 2)
        assert values == pytest.approx([row["metrics"][tag] for row in history], rel=1e-6)
    assert found["version/updates"] == [(1, 2.0), (2, 2.0)]
    assert found["version/rejected"] == [(1, 0.0), (2, 0.0)]
    for participant in ("p0", "p1"):
        losses = found[f"participant/{participant}/loss"]
        assert [step for step, _ in losses] == [1, 2]
        assert all(0 < value < 1 for _, value in losses)
        assert [s for s, _ in found[f"participant/{participant}/accuracy"]] == [1, 2]


def test_updates_count_at_the_version_they_are_folded_into_and_duplicates_are_not_rejections(
    tmp_path,
):
    board = TensorBoardScalars(tmp_path, "f")

    def row(version: int, n: int, metrics: dict[str, float]) -> VersionSummary:
        return VersionSummary(
            version=version, round=version, closed_by="quorum", n_updates=n, participants=[],
            rejected={}, seconds=1.5, metrics=metrics, epsilon=0.25 * version,
        )  # fmt: skip

    board.update_seen(UpdateSeen("a/b", True, metrics={"loss": 0.5}))
    board.update_seen(UpdateSeen("c", False, "stale"))
    board.update_seen(UpdateSeen("c", False, "duplicate"))
    board.version_committed(row(1, 1, {"accuracy": 0.75}))
    board.update_seen(UpdateSeen("c", True, metrics={"loss": 0.25}))
    board.version_committed(row(2, 1, {}))
    board.close()
    found = scalars(tmp_path / "f")
    assert found["participant/a_b/loss"] == [(1, 0.5)]  # a "/" would nest the tag
    assert found["participant/c/loss"] == [(2, 0.25)]
    assert found["version/rejected"] == [(1, 1.0), (2, 0.0)]
    assert found["global/accuracy"] == [(1, 0.75)]
    assert found["version/epsilon"] == [(1, 0.25), (2, 0.5)]


def test_an_unwritable_tensorboard_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_fedq(
        "simulate", "--app", "fedq.apps.synthetic:app", "-n", "1", "--rounds", "1",
        "--federation", "tb", "--state-dir", str(tmp_path), "--tensorboard-dir", str(blocker),
    )  # fmt: skip
    assert result.returncode == 2
    assert "--tensorboard-dir" in result.stderr and "cannot write there" in result.stderr
    assert "Traceback" not in result.stderr


def test_tensorflow_start_up_lines_stay_out_of_the_output(tmp_path):
    """TensorBoard loads TensorFlow, whose C++ runtime writes its start-up lines (oneDNN,
    CPU features, absl) to fd 2 whatever TF_CPP_MIN_LOG_LEVEL says: with the synthetic
    app, nothing else would load it, so any such line came from --tensorboard-dir."""
    env = {k: v for k, v in fedq_env().items() if not k.startswith("TF_")}
    result = subprocess.run(
        [*FEDQ, "simulate", "--app", "fedq.apps.synthetic:app", "-n", "2", "-r", "1",
         "--state-dir", str(tmp_path / "state"), "--tensorboard-dir", str(tmp_path / "tb")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "TensorBoard scalars in" in output
    for chatter in ("oneDNN", "absl::InitializeLog", "cpu_feature_guard"):
        assert chatter not in output, output
