"""``fedq export``: the federated model as a .keras file that Keras alone loads."""

from __future__ import annotations

import importlib
import json

import pytest

from fedq.participant.app import AppError
from tests.helpers import run_fedq

pytestmark = [pytest.mark.processes, pytest.mark.keras]


@pytest.mark.keras
@pytest.mark.parametrize(
    "spec",
    [
        "fedq.apps.dense:app",
        # Subclassed, with batch normalization: its class is registered as serializable,
        # and importing tests.keras_apps (for its test data) registers it here too.
        "tests.keras_apps:subclassed_app",
    ],
)
def test_the_exported_model_loads_in_keras_and_scores_what_the_coordinator_reported(tmp_path, spec):
    report = tmp_path / "report.json"
    run = run_fedq(
        "simulate", "--app", spec, "-n", "3", "--rounds", "2",
        "--federation", "exp", "--state-dir", str(tmp_path), "--report", str(report),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = tmp_path / "global.keras"
    export = run_fedq(
        "export", "--app", spec, "--state-dir", str(tmp_path / "exp"), "--out", str(out),
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    import keras

    module = importlib.import_module(spec.partition(":")[0])
    model = keras.saving.load_model(out)
    x, y = module.load_test()
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


@pytest.mark.keras
def test_a_model_keras_cannot_load_back_is_not_exported(tmp_path):
    from tests.keras_apps import unregistered_app

    out = tmp_path / "m.keras"
    with pytest.raises(AppError, match="register_keras_serializable"):
        unregistered_app.export(unregistered_app.initial_weights(), out)
    assert not out.exists()
