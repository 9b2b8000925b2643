"""What an app is: a user's model and data, named ``package.module:attr``.

An app is any object with ``initial_weights``, ``train`` and ``evaluate`` (see :class:`App`),
and optionally ``check()``, which raises AppError when this machine cannot run it (say, its
data is missing), so that the CLI stops before the federation starts.
Keras users subclass nothing: :class:`fedq.apps.keras_app.KerasApp` wraps a model builder
and two data loaders. The shipped apps live in :mod:`fedq.apps`. The coordinator needs
only part of an app (see :class:`fedq.coordinator.app.CoordinatorApp`); this is the
participant's side.

Hooks an app may also have, for what a real device does beside training (experiments use
them too: :mod:`fedq.experiments` wraps an app to slow it, drop it out or poison it):

- ``accepts(version) -> bool``: whether to train on model ``version`` now. A model
  declined is acked and skipped, nothing trained or sent for it, and counted in
  ``ParticipantStats.rounds_dropped`` (a phone that trains only while charging declines
  the others). Asked before the model takes one of the process's working slots.
- ``train`` as a coroutine function (``async def``): awaited on the event loop instead of
  run in a worker thread, for an app that waits on something, such as remote work. It runs
  its own blocking work in threads, and holds no working slot while it waits
  (:func:`fedq.participant.working.pausing`). :func:`train_on` calls either kind.
- ``transform_delta(delta) -> delta``: the delta as it is to be sent (clipped, or noised
  for local privacy), before the update codec; it keeps every tensor's name, shape and
  dtype, and runs in a worker thread.
- ``export_formats`` (names such as ``keras``, ``savedmodel``, ``tflite``, ``onnx``) and
  ``export(weights, path, format)``: write a model version for use without fedq
  (``fedq export``, which refuses a format not listed in one line naming those listed).
  The shipped Keras and PyTorch app bases have them; a user's app adds its own formats.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonDict

from fedq.messages.codec import Weights
from fedq.messages.schema import wire_metrics
from fedq.participant.scheme import IID, Scheme


class AppError(RuntimeError):
    """The app cannot be loaded or cannot do its job; the message says what to do."""


@dataclass(frozen=True)
class Partition:
    """Which share of the data a participant holds: ``index`` of ``count`` (0-based), split
    by ``scheme`` (the shipped apps follow it; see :mod:`fedq.participant.partitions`)."""

    index: int = 0
    count: int = 1
    scheme: Scheme = IID

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise AppError(f"partition {self.index}/{self.count}: need 0 <= index < count")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Partition:
        """``INDEX/COUNT``, e.g. ``2/4`` (split ``iid``); ValueError otherwise."""
        index, _, count = text.partition("/")
        try:
            return cls(int(index), int(count))
        except (ValueError, AppError):
            raise ValueError(f"{text!r}: expected INDEX/COUNT with 0 <= INDEX < COUNT") from None


#: The default a training flag shows: the app's own ``train_config`` (``fedq.options``).
APPS: JsonDict = {"shown_default": "the app's"}


class TrainConfig(BaseModel):
    """How a participant trains each round: declared once, for the app's own
    ``train_config``, ``fedq simulate``'s and ``fedq participant``'s flags (each a field,
    see :mod:`fedq.options`). ``None`` keeps what the app's model was compiled with (its
    optimizer's learning rate and momentum). A bad value is an AppError, whoever made it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(1, description="Local epochs per round.", json_schema_extra=APPS)
    batch_size: int = Field(32, description="Local batch size.", json_schema_extra=APPS)
    learning_rate: float | None = Field(
        None, description="The local optimizer's learning rate.", json_schema_extra=APPS
    )
    momentum: float | None = Field(
        None,
        description="The local optimizer's momentum, SGD or RMSprop only.",
        json_schema_extra=APPS,
    )
    #: False (the default, as in NIID-Bench and most papers): every round starts from a
    #: fresh local optimizer (no momentum or Adam moments carried over from the previous
    #: global model). True keeps the optimizer's state across rounds.
    keep_optimizer: bool = Field(
        False,
        description="Keep the local optimizer's state (momentum, moments) across rounds, or "
        "start each round with a fresh one (the shipped apps: fresh, as in NIID-Bench).",
        json_schema_extra={"flag": "--keep-optimizer/--fresh-optimizer", **APPS},
    )
    #: FedProx's mu: adds mu/2 * ||w - w_global||^2 over the trainable weights to the local
    #: loss, pulling local training toward the round's global model (0: plain FedAvg).
    proximal_mu: float = Field(
        0.0,
        description="FedProx: pull local training toward the global model.",
        json_schema_extra=APPS,
    )

    weight_decay: float | None = Field(
        None,
        description="The local optimizer's weight decay, e.g. 1e-5 as in NIID-Bench.",
        json_schema_extra=APPS,
    )
    #: Federated evaluation: each participant holds out LOCAL_EVAL_FRACTION of its data
    #: and, before training on a model, evaluates that model there; the update carries the
    #: result as ``local_<metric>``, so the spread across participants is in the ledger.
    evaluate_local: bool = Field(
        False,
        description="Hold out 10% of the local data and evaluate each global model on it "
        "before training (local_accuracy, local_loss in each update).",
    )

    @model_validator(mode="after")
    def _sensible(self) -> TrainConfig:
        # AppError, not a ValidationError: an app that builds a TrainConfig gets the same
        # one line as a flag does.
        if self.epochs < 1 or self.batch_size < 1:
            raise AppError("epochs and batch size must be at least 1")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise AppError(f"learning rate {self.learning_rate}: must be > 0")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise AppError(f"momentum {self.momentum}: must be in [0, 1)")
        if not self.proximal_mu >= 0:
            raise AppError(f"proximal mu {self.proximal_mu}: must be >= 0")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise AppError(f"weight decay {self.weight_decay}: must be >= 0")
        return self

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """This config with every override that is not None applied (flags over the app)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return TrainConfig.model_validate({**self.model_dump(), **given})


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

    def train(
        self, weights: Weights, partition: Partition, config: TrainConfig
    ) -> TrainResult | Awaitable[TrainResult]:
        """Train from ``weights`` on the partition's data; return the local weights (an
        ``async def train`` returns them when awaited). ``weights`` are the participant's
        own writable copy of the global model, which it reuses once ``train`` returns (it
        becomes the delta): copy what you keep of it. Return new arrays, never ``weights``'
        own (nor views of them): the delta is what ``train`` returns minus ``weights``, so
        an app that trains in place and returns them would send zeros. fedq refuses such a
        result (:func:`train_on`)."""
        ...

    def evaluate(self, weights: Weights) -> dict[str, float] | None:
        """Centralized evaluation on held-out data (``loss``, ``accuracy``), or None."""
        ...


def app_train_config(app: App) -> TrainConfig:
    """How ``app`` trains unless told otherwise: its ``train_config``, else fedq's."""
    config = getattr(app, "train_config", None)
    return config if isinstance(config, TrainConfig) else TrainConfig()


async def train_on(
    app: App, weights: Weights, partition: Partition, config: TrainConfig
) -> TrainResult:
    """``app.train``: awaited if it is a coroutine function, else run in a worker thread
    (:func:`trained`)."""
    if inspect.iscoroutinefunction(app.train):
        result = await cast(Awaitable[TrainResult], app.train(weights, partition, config))
        return _checked(weights, result)
    return await asyncio.to_thread(trained, app, weights, partition, config)


def trained(app: App, weights: Weights, partition: Partition, config: TrainConfig) -> TrainResult:
    """A plain ``app.train``, called here (a worker thread: a participant makes its copy of
    the model in the same one), its result checked as :func:`train_on` checks it."""
    return _checked(weights, cast(TrainResult, app.train(weights, partition, config)))


def _checked(given: Weights, result: TrainResult) -> TrainResult:
    """``result``, refused if it shares memory with ``given`` (:func:`_refuse_shared`), with
    the metrics an update may carry (:func:`~fedq.messages.schema.wire_metrics`): a metric
    the app names oddly, or a loss gone NaN, is left out rather than refused."""
    _refuse_shared(given, result.weights)
    return replace(result, metrics=wire_metrics(result.metrics))


def _refuse_shared(given: Weights, returned: Weights) -> None:
    """An AppError if a returned array shares memory with a given one: ``train`` trained in
    place and returned what it was given, so the global model it started from is gone and
    the delta (returned - given) would be all zeros, sent as if it were a real update.
    ``may_share_memory`` compares bounds only (no false negatives, O(1) per tensor)."""
    shared = [
        name
        for name, array in returned.items()
        if name in given and np.may_share_memory(array, given[name])
    ]
    if shared:
        names = ", ".join(shared[:3]) + (f" and {len(shared) - 3} more" if len(shared) > 3 else "")
        raise AppError(
            f"train returned arrays that share memory with the weights it was given ({names}):"
            " the delta would be all zeros; return new arrays (a copy, or the model's own)"
        )


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
