"""Aggregators and server optimizers, by name or as a user's ``package.module:attr``.

A new built-in is one file in this folder plus one line in the tables below; a user's own
plugs in without either: ``--aggregator mypkg.robust:GeometricMedian`` names a class (or
any callable) that takes the options as keyword arguments and returns an
:class:`~fedq.coordinator.strategies.base.Aggregator`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

from fedq.coordinator.strategies.base import (
    Aggregation,
    AggregationContext,
    Aggregator,
    ServerOptimizer,
    StrategyError,
)

_P = "fedq.coordinator.strategies"

#: name -> where its class lives (imported only when chosen).
AGGREGATORS: dict[str, str] = {
    "mean": f"{_P}.mean:WeightedMean",
    "clipped_mean": f"{_P}.clipped_mean:NormClippedMean",
    "median": f"{_P}.median:CoordinateMedian",
    "trimmed_mean": f"{_P}.trimmed_mean:TrimmedMean",
    "krum": f"{_P}.krum:Krum",
}
OPTIMIZERS: dict[str, str] = {
    "fedavg": f"{_P}.fedavg:FedAvg",
    "fedavgm": f"{_P}.fedavgm:FedAvgM",
    "fedadam": f"{_P}.fedadam:FedAdam",
    "fedyogi": f"{_P}.fedyogi:FedYogi",
    "fedadagrad": f"{_P}.fedadagrad:FedAdagrad",
}

T = TypeVar("T")


def _build(
    kind: str, spec: str, table: Mapping[str, str], base: type[T], options: Mapping[str, Any]
) -> T:
    target = table.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise StrategyError(
            f"{kind} {spec!r}: choose one of {', '.join(table)} or name your own as "
            "package.module:attr"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise StrategyError(f"{kind} {spec!r} cannot be imported: {exc}") from None
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise StrategyError(
            f"{kind} {spec!r} does not take these options {dict(options)}: {exc}"
        ) from None
    except ValueError:  # no signature (a builtin): let the call decide
        pass
    try:
        built = factory(**options)
    except (TypeError, ValueError) as exc:
        raise StrategyError(f"{kind} {spec!r}: {exc}") from None
    if not isinstance(built, base):
        raise StrategyError(f"{kind} {spec!r} made a {type(built).__name__}, not a {base.__name__}")
    return built


def build_aggregator(spec: str, options: Mapping[str, Any] | None = None) -> Aggregator:
    return _build("aggregator", spec, AGGREGATORS, Aggregator, options or {})  # type: ignore[type-abstract]


def build_optimizer(spec: str, options: Mapping[str, Any] | None = None) -> ServerOptimizer:
    return _build("server optimizer", spec, OPTIMIZERS, ServerOptimizer, options or {})  # type: ignore[type-abstract]


__all__ = [
    "AGGREGATORS",
    "OPTIMIZERS",
    "Aggregation",
    "AggregationContext",
    "Aggregator",
    "ServerOptimizer",
    "StrategyError",
    "build_aggregator",
    "build_optimizer",
]
