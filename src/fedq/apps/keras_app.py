"""Keras apps: a model builder and data loaders, turned into a fedq :class:`~fedq.apps.App`.

A user's app is a dozen lines::

    app = KerasApp(build_model=make_cnn, load_partition=my_shard, load_test=my_test)

Weights are named ``w000:kernel`` ... by position in ``model.weights``: Keras numbers layer
names per process (``dense``, ``dense_1`` ...), so positional names are the only ones two
processes agree on. Each partition trains its own model instance, built once and reused;
threads never share a model. How it trains each round (a fresh optimizer by default,
learning rate, momentum, FedProx) is :mod:`fedq.apps.local_training`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedq.apps import keras_export
from fedq.apps.framework_app import Arrays as Arrays  # re-exported: apps name their data with it
from fedq.apps.framework_app import FrameworkApp
from fedq.apps.local_training import LocalTraining
from fedq.messages.codec import Weights
from fedq.participant import partitions
from fedq.participant.app import AppError, Partition, TrainConfig, TrainResult
from fedq.runtime.quiet import native_stderr_silenced

if TYPE_CHECKING:
    import keras

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ info lines


@functools.cache
def import_keras() -> Any:
    """Import Keras (and TensorFlow) once, quietly. Python errors still surface as usual.

    TensorFlow's own warnings are turned off too: with one model per simulated participant
    in a process, "N out of the last M calls triggered tf.function retracing" counts the
    first trace of every model's own training function, which is expected, not a fault."""
    with native_stderr_silenced():
        import keras
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return keras


class KerasApp(FrameworkApp["keras.Model"]):
    """A compiled ``keras.Model`` (Sequential, functional or subclassed) and its data as an app.

    What is federated is ``model.weights``, every variable in it: trainable ones and
    non-trainable ones alike. Batch-norm moving means and variances are therefore averaged
    like kernels (FedAvg: the example-weighted mean of what participants send), so the global
    model carries statistics of all the participants' data, and the coordinator's held-out
    evaluation and ``fedq export`` see a model fit for inference. (FedBN's alternative, batch
    norm kept local, leaves no single global model to evaluate or export.) Optimizer state is
    not federated. ``build_model`` must return the model compiled and built (see
    :func:`_checked`).
    """

    def __init__(
        self,
        build_model: Callable[[], keras.Model],
        load_partition: Callable[[Partition], Arrays],
        load_test: Callable[[], Arrays] | None = None,
        seed: int = 0,
        train_config: TrainConfig | None = None,
        check: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(load_partition, load_test, check)
        #: What a participant runs unless its flags say otherwise.
        self.train_config = train_config or TrainConfig()
        self._build = build_model
        self._seed = seed
        self._local: dict[Partition, LocalTraining] = {}
        self._initial: Weights | None = None

    def _new_model(self) -> keras.Model:
        keras = import_keras()
        keras.utils.set_random_seed(self._seed)  # same initial weights everywhere
        return _checked(self._build())

    @staticmethod
    def _names(model: keras.Model) -> list[str]:
        return [f"w{i:03d}:{v.name}" for i, v in enumerate(model.weights)]

    def _get(self, model: keras.Model) -> Weights:
        return dict(zip(self._names(model), model.get_weights(), strict=True))

    @staticmethod
    def _set(model: keras.Model, weights: Weights) -> None:
        model.set_weights([np.asarray(w, dtype=np.float32) for w in weights.values()])

    def initial_weights(self) -> Weights:
        if self._initial is None:
            self._initial = self._get(self._model("initial"))
        return self._initial

    def train(self, weights: Weights, partition: Partition, config: TrainConfig) -> TrainResult:
        model = self._model(("train", partition))
        x, y = self._partition_data(partition)
        self._set(model, weights)
        metrics: dict[str, float] = {}
        if config.evaluate_local and len(x) > 1:
            (x, y), (held_x, held_y) = held_out(x, y, self._seed + partition.index)
            values = model.evaluate(held_x, held_y, verbose=0, return_dict=True)
            metrics |= {f"local_{k}": float(v) for k, v in values.items()}
        with self._lock:
            local = self._local.get(partition)
            if local is None:
                local = self._local[partition] = LocalTraining(model)
        local.prepare(config)
        history = model.fit(
            x, y, epochs=config.epochs, batch_size=config.batch_size, verbose=0, shuffle=True
        )
        metrics |= {k: float(v[-1]) for k, v in history.history.items()}
        return TrainResult(self._get(model), num_examples=len(x), metrics=metrics)

    #: The formats :meth:`export` writes (``fedq export --format``); see
    #: :mod:`fedq.apps.keras_export`.
    export_formats: tuple[str, ...] = tuple(keras_export.WRITERS)

    def model_of(self, weights: Weights) -> keras.Model:
        """A model of this app holding ``weights``, built anew and the caller's own: the
        federation's model to predict with, inspect or save outside fedq."""
        import_keras()
        model = _checked(self._build())
        self._set(model, weights)
        return model

    def export(self, weights: Weights, path: Path, format: str = "keras") -> None:
        """Write ``weights`` as a model in ``format`` (one of :attr:`export_formats`) to
        ``path``, for use without fedq."""
        if format not in keras_export.WRITERS:
            raise AppError(f"a Keras app writes {', '.join(self.export_formats)}, not {format}")
        keras_export.write(self.model_of(weights), path, format)

    def evaluate(self, weights: Weights) -> dict[str, float] | None:
        if self._load_test is None:
            return None
        model = self._model("evaluate")
        x, y = self._load_test()
        self._set(model, weights)
        values = model.evaluate(x, y, verbose=0, return_dict=True)
        return {k: float(v) for k, v in values.items()}


def _checked(model: keras.Model) -> keras.Model:
    """``model`` if fedq can federate it: compiled (participants call ``fit``), and built, so
    that ``model.weights`` (what is federated, non-trainable variables such as batch-norm
    statistics included) exists before any data is seen. A subclassed model has no weights
    until it is called, and the coordinator never calls it: it needs version 0's weights."""
    if not model.weights:
        raise AppError(
            f"build_model returned a {type(model).__name__} without weights: a subclassed "
            "model has none until it is called; call it on a batch of the input's shape "
            "before returning it, e.g. model(keras.ops.zeros((1, *input_shape)))"
        )
    if not getattr(model, "compiled", True):
        raise AppError(
            f"build_model returned a {type(model).__name__} that is not compiled: call "
            "model.compile(optimizer=..., loss=..., metrics=[...]) before returning it"
        )
    return model


#: The share of a participant's data held out for federated evaluation (--evaluate-local).
LOCAL_EVAL_FRACTION = 0.1


def held_out(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[Arrays, Arrays]:
    """(what it trains on, what it evaluates on): LOCAL_EVAL_FRACTION of the examples (at
    least one, and one fewer than all), drawn with ``seed``, the same every round. Drawn,
    not the last ones: a non-IID partition may hold its labels in runs."""
    n = len(x)
    size = min(max(1, round(LOCAL_EVAL_FRACTION * n)), n - 1)
    chosen = np.zeros(n, bool)
    chosen[np.random.default_rng(seed).choice(n, size, replace=False)] = True
    return (x[~chosen], y[~chosen]), (x[chosen], y[chosen])


def shard(arrays: Arrays, partition: Partition, seed: int) -> Arrays:
    """The share ``partition`` of ``arrays`` under its scheme (see :mod:`fedq.participant.
    partitions`); ``iid`` is a fixed-seed shuffle cut in equal slices."""
    return partitions.apply(arrays, partition, partition.scheme, seed)
