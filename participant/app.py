"""What an app is: a user's model and data, named ``package.module:attr``.

An app is any object with ``initial_weights``, ``train`` and ``evaluate`` (see :class:`App`),
and optionally ``check()``, which raises AppError when this machine cannot run it (say, its
data is missing), so that the CLI stops before the federation starts.
Keras users subclass nothing: :class:`fedq.apps.keras_app.KerasApp` wraps a model builder
and two data loaders. The shipped apps live in :mod:`fedq.apps`. The coordinator needs
only part of an app (see :class:`fedq.coordinator.app.CoordinatorApp`); this is the
participant's side.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from fedq.messages.codec import Weights


class AppError(RuntimeError):
    """The app cannot be loaded or cannot do its job; the message says what to do."""


@dataclass(frozen=True)
class Partition:
    """Which share of the data a participant holds: ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise AppError(f"partition {self.index}/{self.count}: need 0 <= index < count")


@dataclass(frozen=True)
class TrainConfig:
    """How a participant trains each round. ``None`` keeps what the app's model was compiled
    with (its optimizer's learning rate and momentum)."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float | None = None
    momentum: float | None = None
    #: False (the default, as in NIID-Bench and most papers): every round starts from a
    #: fresh local optimizer (no momentum or Adam moments carried over from the previous
    #: global model). True keeps the optimizer's state across rounds.
    keep_optimizer: bool = False
    #: FedProx's mu: adds mu/2 * ||w - w_global||^2 over the trainable weights to the local
    #: loss, pulling local training toward the round's global model (0: plain FedAvg).
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise AppError("epochs and batch size must be at least 1")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise AppError(f"learning rate {self.learning_rate}: must be > 0")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise AppError(f"momentum {self.momentum}: must be in [0, 1)")
        if not self.proximal_mu >= 0:
            raise AppError(f"proximal mu {self.proximal_mu}: must be >= 0")

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """This config with every override that is not None applied (flags over the app)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class TrainResult:
    weights: Weights
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class App(Protocol):
    """What fedq needs from a user's model and data. Methods run in worker threads."""

    def initial_weights(self) -> Weights:
        """Model version 0, in model order. Must be the same in every process."""
        ...

    def train(self, weights: Weights, partition: Partition, config: TrainConfig) -> TrainResult:
        """Train from ``weights`` on the partition's data; return the local weights.
        ``weights`` are the participant's own writable copy of the global model, which it
        reuses once ``train`` returns (it becomes the delta): copy what you keep of it."""
        ...

    def evaluate(self, weights: Weights) -> dict[str, float] | None:
        """Centralized evaluation on held-out data (``loss``, ``accuracy``), or None."""
        ...


def load_app(spec: str) -> App:
    """Import ``package.module:attr``; every failure is one AppError line."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppError(
            f"app {spec!r} must look like package.module:attr (e.g. fedq.apps.dense:app)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise AppError(
            f"cannot import {module_name!r} for app {spec!r} ({exc}): check the module path "
            "and that it is importable (installed, or on PYTHONPATH)"
        ) from None
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise AppError(f"module {module_name!r} has no attribute {attr!r} (app {spec!r})") from None
    if not isinstance(app, App):
        raise AppError(
            f"{spec!r} is a {type(app).__name__}, not an app: it needs initial_weights(), "
            "train() and evaluate()"
        )
    check = getattr(app, "check", None)
    if callable(check):  # optional: fail now, in one line, rather than mid-federation
        check()
    return app
