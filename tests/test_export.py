"""``fedq export``: the federated model in each format an app writes, loaded back by that
format's own runtime (Keras, TensorFlow, TFLite, ONNX Runtime) and predicting what the
federation's model predicts; and one line for what an app cannot write.

The reference is the checkpoint the export read, put into a model by the app itself
(``app.model_of``). The ``.keras`` file is the same graph and kernels run in the same
process: bit-equal. The other formats run the same float32 weights through other kernels (a
SavedModel's graph after TensorFlow's optimizer, TFLite's XNNPACK, ONNX Runtime), which sum
in another order and fuse other operations, so outputs may move by a few units in the last
place of the outputs' scale: float32 keeps 24 bits, 6e-8 of it. Measured here (64 held-out
examples; largest difference / largest output): savedmodel 0 for both Keras apps, tflite
9e-8 / 0.98 (dense) and 1.8e-7 / 1.0 (subclassed, batch norm), onnx 6e-8 / 0.98, 9e-8 / 1.0
and 5.4e-7 / 2.27 (the PyTorch CNN's logits): at most 2.4e-7 of the scale. The bound,
1e-5 of the scale (:data:`TOLERANCE`), is 40 times that: loose enough for another CPU's
kernels, tight enough that a TFLite file with float16 weights (2e-4 and 3e-4 off, measured
by converting with ``target_spec.supported_types = [tf.float16]``) fails. Each
test also checks that the trained model's predictions differ from the initial model's by
far more than the bound, so a stale or wrong model cannot pass."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.participant.app import AppError, load_app
from tests.helpers import FEDQ, fedq_env, run_fedq

#: Every test runs fedq commands, and most train real models first.
pytestmark = [pytest.mark.processes, pytest.mark.keras]

#: The largest difference allowed between an export's predictions and the reference, per
#: format, as a fraction of the largest output (the outputs' scale).
TOLERANCE = {"keras": 0.0, "savedmodel": 1e-5, "tflite": 1e-5, "onnx": 1e-5}


@dataclass(frozen=True)
class Federation:
    """A finished ``fedq simulate`` run: its app, folder and what the coordinator reported."""

    spec: str
    folder: Path
    report: dict[str, object]

    def weights(self, version: int | None = None) -> dict[str, np.ndarray]:
        last = self.report["model_version"]
        assert isinstance(last, int)
        chosen = last if version is None else version
        return load_checkpoint(checkpoint_path(self.folder / "models", chosen))


def federate(spec: str, where: Path, *flags: str) -> Federation:
    report = where / "report.json"
    run = run_fedq(
        "simulate", "--app", spec, "-n", "3", "--rounds", "2", *flags,
        "--federation", "exp", "--state-dir", str(where), "--report", str(report),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return Federation(spec, where / "exp", json.loads(report.read_text()))


KERAS_APPS = [
    "fedq.apps.dense:app",
    # Subclassed, with batch normalization: its class is registered as serializable,
    # and importing tests.keras_apps (for its test data) registers it here too.
    "tests.keras_apps:subclassed_app",
]


@pytest.fixture(scope="module", params=KERAS_APPS)
def keras_federation(request, tmp_path_factory) -> Federation:
    return federate(request.param, tmp_path_factory.mktemp("keras"))


@pytest.fixture(scope="module")
def torch_federation(tmp_path_factory) -> Federation:
    pytest.importorskip("torch")  # the .[torch] extra; CI installs it (a skip fails there)
    return federate("tests.torch_apps:small_fmnist", tmp_path_factory.mktemp("torch"))


def held_out_inputs(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """64 held-out examples of the app ``spec`` and their labels."""
    if spec == "tests.torch_apps:small_fmnist":
        from fedq.apps import fmnist
        from fedq.apps.torch_fmnist import channels_first

        return channels_first(fmnist.load_test(), 64)
    import importlib

    x, y = importlib.import_module(spec.partition(":")[0]).load_test()
    return x[:64], y[:64]


def export(federation: Federation, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return run_fedq(
        "export", "--app", federation.spec, "--state-dir", str(federation.folder),
        "--out", str(out), *flags,
    )  # fmt: skip


def keras_reference(federation: Federation, x: np.ndarray, version: int | None = None):
    model = load_app(federation.spec).model_of(federation.weights(version))  # type: ignore[attr-defined]
    return model.predict(x, verbose=0)


def load_and_predict(format: str, path: Path, x: np.ndarray) -> np.ndarray:
    """What the file at ``path`` predicts for ``x``, through ``format``'s own runtime."""
    if format == "keras":
        import keras

        return keras.saving.load_model(path).predict(x, verbose=0)
    if format == "savedmodel":
        import tensorflow as tf

        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        (name,) = serve.structured_input_signature[1]
        (output,) = serve(**{name: tf.constant(x)}).values()
        return output.numpy()
    if format == "tflite":
        import tensorflow as tf

        interpreter = tf.lite.Interpreter(model_path=str(path))
        (given,) = interpreter.get_input_details()
        interpreter.resize_tensor_input(given["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(given["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert format == "onnx"
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    return session.run(None, {given.name: x})[0]


def assert_predicts_the_same(got: np.ndarray, reference: np.ndarray, tolerance: float) -> None:
    assert got.shape == reference.shape
    np.testing.assert_allclose(got, reference, rtol=0, atol=tolerance * np.abs(reference).max())


def assert_far_apart(trained: np.ndarray, initial: np.ndarray) -> None:
    """The trained model's predictions differ from version 0's by 100 times the bound."""
    bound = max(TOLERANCE.values()) * np.abs(trained).max()
    assert np.abs(trained - initial).max() > 100 * bound


@pytest.mark.parametrize(
    ("format", "name"),
    [("keras", "m.keras"), ("savedmodel", "model"), ("tflite", "m.tflite"), ("onnx", "m.onnx")],
)
def test_each_format_of_a_keras_app_loads_back_and_predicts_what_the_federation_does(
    keras_federation, tmp_path, format, name
):
    out = tmp_path / name
    result = export(keras_federation, out)  # the format from --out's suffix
    assert result.returncode == 0, result.stderr
    assert f"written to {out} ({format})" in result.stderr
    x, _ = held_out_inputs(keras_federation.spec)
    reference = keras_reference(keras_federation, x)
    assert_far_apart(reference, keras_reference(keras_federation, x, version=0))
    assert_predicts_the_same(load_and_predict(format, out, x), reference, TOLERANCE[format])


def test_the_exported_keras_file_scores_what_the_coordinator_reported(keras_federation, tmp_path):
    import keras

    out = tmp_path / "global.keras"
    assert export(keras_federation, out).returncode == 0
    x, y = __import__(keras_federation.spec.partition(":")[0], fromlist=["load_test"]).load_test()
    scores = keras.saving.load_model(out).evaluate(x, y, verbose=0, return_dict=True)
    reported = keras_federation.report["final_metrics"]
    assert isinstance(reported, dict)
    assert scores["accuracy"] == pytest.approx(reported["accuracy"], abs=1e-6)
    assert scores["loss"] == pytest.approx(reported["loss"], rel=1e-5)


def test_the_pytorch_app_exports_onnx_that_predicts_what_the_federation_does(
    torch_federation, tmp_path
):
    import torch

    out = tmp_path / "cnn.onnx"
    result = export(torch_federation, out)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["cnn.onnx"]  # the weights inside it
    x, _ = held_out_inputs(torch_federation.spec)
    app = load_app(torch_federation.spec)

    def predict(version: int | None = None) -> np.ndarray:
        model = app.model_of(torch_federation.weights(version)).eval()  # type: ignore[attr-defined]
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    reference = predict()
    assert_far_apart(reference, predict(0))
    assert_predicts_the_same(load_and_predict("onnx", out, x), reference, TOLERANCE["onnx"])


def test_a_format_the_app_cannot_write_is_one_line_naming_those_it_can(torch_federation, tmp_path):
    out = tmp_path / "cnn.tflite"
    result = export(torch_federation, out)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fedq: app 'tests.torch_apps:small_fmnist' cannot write tflite: it writes onnx"
    ]
    assert not out.exists()


def test_onnx_without_the_onnx_extra_is_one_line_naming_it(torch_federation, tmp_path):
    # A module set to None in sys.modules is one Python cannot import (nor find).
    without = "import sys; sys.modules['onnxscript'] = None; from fedq.cli import main; main()"
    out = tmp_path / "cnn.onnx"
    args = ["--app", torch_federation.spec, "--state-dir", str(torch_federation.folder)]
    result = subprocess.run(
        [sys.executable, "-c", without, "export", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=fedq_env(),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fedq: ONNX export needs onnxscript: pip install 'fedq[onnx]'"
    ]
    assert not out.exists()


def test_the_format_and_the_path_come_from_the_environment_or_a_config_file(
    keras_federation, tmp_path
):
    env = fedq_env() | {"FEDQ_EXPORT_FORMAT": "tflite", "FEDQ_EXPORT_OUT": str(tmp_path / "a")}
    args = ["export", "--app", keras_federation.spec, "--state-dir", str(keras_federation.folder)]
    by_env = subprocess.run([*FEDQ, *args], capture_output=True, text=True, env=env)
    assert by_env.returncode == 0, by_env.stderr
    assert (tmp_path / "a").read_bytes()[4:8] == b"TFL3"  # a TFLite flatbuffer's identifier
    config = tmp_path / "export.toml"
    config.write_text(f'format = "savedmodel"\nout = "{tmp_path / "b"}"\n')
    by_file = run_fedq(*args, "--config", str(config))
    assert by_file.returncode == 0, by_file.stderr
    assert (tmp_path / "b" / "saved_model.pb").exists()


def test_an_app_that_fails_to_write_its_format_is_one_line_naming_the_error(tmp_path):
    federation = federate("tests.broken_app:broken_export", tmp_path)
    result = export(federation, tmp_path / "m.npz", "--format", "npz")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fedq: app 'tests.broken_app:broken_export' failed to write npz: ValueError: "
        "cannot write an npz file"
    ]


@pytest.mark.parametrize(
    ("out", "flags", "says"),
    [
        ("m.bin", [], "--out {out}: its suffix names no format; pass --format"),
        ("m.keras", ["--format", "onnx"], "--out {out} names a keras model, not onnx"),
    ],
)
def test_an_out_path_that_names_no_format_or_another_is_one_line(tmp_path, out, flags, says):
    path = tmp_path / out
    result = run_fedq(
        "export", "--app", "fedq.apps.dense:app", "--state-dir", str(tmp_path),
        "--out", str(path), *flags,
    )  # fmt: skip
    assert result.returncode == 2 and says.format(out=path) in result.stderr


def test_export_of_a_folder_without_a_ledger_is_one_line(tmp_path):
    result = run_fedq(
        "export", "--app", "fedq.apps.dense:app", "--state-dir", str(tmp_path),
        "--out", str(tmp_path / "m.keras"),
    )  # fmt: skip
    assert result.returncode == 2 and "no ledger in" in result.stderr


def test_a_model_keras_cannot_load_back_is_not_exported(tmp_path):
    from tests.keras_apps import unregistered_app

    out = tmp_path / "m.keras"
    with pytest.raises(AppError, match="register_keras_serializable"):
        unregistered_app.export(unregistered_app.initial_weights(), out)
    assert not out.exists()
