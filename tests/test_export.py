"""``fedq export``: the federated model as a .keras file that Keras alone loads."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_fedq


@pytest.mark.keras
def test_the_exported_model_loads_in_keras_and_scores_what_the_coordinator_reported(tmp_path):
    report = tmp_path / "report.json"
    run = run_fedq(
        "simulate", "--app", "fedq.apps.dense:app", "-n", "3", "--rounds", "2",
        "--federation", "exp", "--state-dir", str(tmp_path), "--report", str(report),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = tmp_path / "global.keras"
    export = run_fedq(
        "export", "--app", "fedq.apps.dense:app", "--state-dir", str(tmp_path / "exp"),
        "--out", str(out),
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    import keras

    from fedq.apps.dense import load_test

    model = keras.saving.load_model(out)
    x, y = load_test()
    scores = model.evaluate(x, y, verbose=0, return_dict=True)
    reported = json.loads(report.read_text())["final_metrics"]
    assert scores["accuracy"] == pytest.approx(reported["accuracy"], abs=1e-6)
    assert scores["loss"] == pytest.approx(reported["loss"], rel=1e-5)


def test_export_of_a_folder_without_a_ledger_is_one_line(tmp_path):
    result = run_fedq(
        "export", "--app", "fedq.apps.dense:app", "--state-dir", str(tmp_path),
        "--out", str(tmp_path / "m.keras"),
    )  # fmt: skip
    assert result.returncode == 2 and "no ledger in" in result.stderr
