"""What every framework's app (Keras, PyTorch) shares: its check, its models and its data.

What must stay true: each key (a partition, ``"initial"``, ``"evaluate"``) gets its own
model, built once and reused, so threads training several partitions in one process never
share one; a partition's data is loaded once (two threads asking for it at once may both
load it: loaders are pure reads, so either copy serves). Building a model holds the lock,
because frameworks seed a process-wide generator around it and version 0 must be the same
in every process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np

from fedq.participant.app import Partition

Arrays = tuple[np.ndarray, np.ndarray]
ModelT = TypeVar("ModelT")


class FrameworkApp(Generic[ModelT]):
    """The shared half of :class:`~fedq.apps.keras_app.KerasApp` and
    :class:`~fedq.apps.torch_app.TorchApp`; a subclass says how to build a model
    (:meth:`_new_model`, called under the lock)."""

    def __init__(
        self,
        load_partition: Callable[[Partition], Arrays],
        load_test: Callable[[], Arrays] | None,
        check: Callable[[], object] | None,
    ) -> None:
        self._load_partition = load_partition
        self._load_test = load_test
        self._check = check
        self._lock = threading.Lock()
        self._models: dict[Any, ModelT] = {}
        self._data: dict[Partition, Arrays] = {}

    def check(self) -> None:
        """Raise AppError if this machine cannot run the app (e.g. its data is missing)."""
        if self._check is not None:
            self._check()

    def _new_model(self) -> ModelT:
        raise NotImplementedError

    def _model(self, key: Any) -> ModelT:
        """The model of ``key`` (a partition, or a role), built on first use."""
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = self._new_model()
            return model

    def _partition_data(self, partition: Partition) -> Arrays:
        with self._lock:
            data = self._data.get(partition)
        if data is None:
            data = self._load_partition(partition)
            with self._lock:
                self._data[partition] = data
        return data
