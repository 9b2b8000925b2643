"""A Keras model written out for use without fedq, in each format Keras and TensorFlow make.

- ``keras``: the whole model (architecture, weights, compile settings) in a ``.keras`` file,
  for ``keras.saving.load_model``; loaded back once before it counts as written, since
  Keras saves a custom class it cannot load again.
- ``savedmodel``: a TensorFlow SavedModel folder of the inference function (Keras 3's
  ``model.export(..., format="tf_saved_model")``), for TF Serving and ``tf.saved_model.load``.
- ``tflite``: that SavedModel through TensorFlow's ``TFLiteConverter`` (float32, no
  quantization: the file predicts what the federation's model predicts), for phones and
  microcontrollers.
- ``onnx``: Keras 3's ``model.export(..., format="onnx")``, which on the TensorFlow backend
  converts with ``tf2onnx``; the ``onnx`` extra installs it.

Each writer takes a built model that already holds the weights to write. The Keras
formats are tested on the TensorFlow backend; on JAX, Keras 3's ONNX export converts with
``jax2onnx``, which the extra does not install.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedq.participant.app import AppError
from fedq.runtime.quiet import native_stderr_silenced

if TYPE_CHECKING:
    import keras


def write_keras(model: keras.Model, path: Path) -> None:
    """``path`` (``*.keras``), checked to load back: a class Keras cannot find again (one
    not registered as serializable) must fail here, not in the user's hands."""
    import keras

    if path.suffix != ".keras":
        raise AppError(f"{path}: Keras saves whole models to a file named *.keras")
    model.save(path)
    try:
        keras.saving.load_model(path)
    except Exception as exc:
        path.unlink(missing_ok=True)
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AppError(
            f"Keras saved the model but cannot load it back ({why}): decorate custom "
            "layers and models with @keras.saving.register_keras_serializable(), give "
            "those whose __init__ takes arguments a get_config(), and build a subclassed "
            "model by calling it on a batch"
        ) from None


def write_saved_model(model: keras.Model, path: Path) -> None:
    """The folder ``path``: a SavedModel whose ``serving_default`` signature is the model's
    inference call (batch-norm layers use their moving statistics, dropout is off)."""
    model.export(str(path), format="tf_saved_model", verbose=False)


def write_tflite(model: keras.Model, path: Path) -> None:
    """``path``: a TFLite flatbuffer converted from a temporary SavedModel, so the file runs
    the same inference function as the ``savedmodel`` format."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="fedq-export-") as folder:
        saved = Path(folder) / "saved_model"
        write_saved_model(model, saved)
        flatbuffer = tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert()
    path.write_bytes(flatbuffer)


def write_onnx(model: keras.Model, path: Path) -> None:
    """``path``: an ONNX graph of the inference call, with a dynamic batch dimension."""
    import keras

    needed = ONNX_CONVERTERS.get(keras.backend.backend(), ["onnx"])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise AppError(
            f"ONNX export of a Keras model on the {keras.backend.backend()} backend needs "
            f"{', '.join(missing)}: pip install {' '.join(missing)} (the fedq[onnx] extra has "
            "those of the TensorFlow and PyTorch backends)"
        )
    _call_once(model)
    model.export(str(path), format="onnx", verbose=False)


#: What Keras 3's ONNX export imports on each backend.
ONNX_CONVERTERS = {
    "tensorflow": ["onnx", "tf2onnx"],
    "jax": ["onnx", "jax2onnx"],
    "torch": ["onnx", "onnxscript"],
}


def _call_once(model: keras.Model) -> None:
    """Keras exports ONNX only from a model it has seen called, even one whose input is
    declared: a Sequential or functional model gets one call on a batch of zeros of its
    input's shape. (A subclassed model was called when it was built: see ``_checked``.)"""
    import keras

    inputs = getattr(model, "inputs", None)
    if not inputs:
        return
    structure = model.input if len(inputs) > 1 else inputs[0]
    batch = keras.tree.map_structure(
        lambda t: keras.ops.zeros((1, *t.shape[1:]), dtype=t.dtype), structure
    )
    model(batch, training=False)


#: Each format a Keras app writes, by its ``--format`` name.
WRITERS: dict[str, Callable[[Any, Path], None]] = {
    "keras": write_keras,
    "savedmodel": write_saved_model,
    "tflite": write_tflite,
    "onnx": write_onnx,
}


def write(model: keras.Model, path: Path, format: str) -> None:
    """``model`` to ``path`` in ``format`` (a key of :data:`WRITERS`). TensorFlow's C++
    runtime writes its start-up, tracing and converter lines straight to file descriptor 2
    meanwhile (whichever Keras backend imports it): they are kept off fedq's output."""
    with native_stderr_silenced():
        WRITERS[format](model, path)
