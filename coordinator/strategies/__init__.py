"""Aggregators and server optimizers, by name or as a user's ``package.module:attr``.

A new built-in is one file in this folder: a subclass of Aggregator or ServerOptimizer
with a ``name`` is found by that name. A user's own needs no file here:
``--aggregator mypkg.robust:GeometricMedian`` names a class (or any callable) that takes
the options as keyword arguments and returns an
:class:`~fedq.coordinator.strategies.base.Aggregator`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from typing import Any, TypeVar

from fedq.coordinator.strategies.base import (
    Aggregation,
    AggregationContext,
    Aggregator,
    ServerOptimizer,
    StrategyError,
)

T = TypeVar("T")


def _named(base: type[T]) -> dict[str, type[T]]:
    """Every subclass of ``base`` in this folder that has a name, by name."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    found: dict[str, type[T]] = {}
    todo = list(base.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        name = getattr(cls, "name", "")
        if name and getattr(cls, "by_name", True) and not inspect.isabstract(cls):
            found[name] = cls
    return dict(sorted(found.items()))


#: name -> class: every aggregator and server optimizer defined in this folder.
AGGREGATORS: dict[str, type[Aggregator]] = _named(Aggregator)  # type: ignore[type-abstract]
OPTIMIZERS: dict[str, type[ServerOptimizer]] = _named(ServerOptimizer)  # type: ignore[type-abstract]


def _build(
    kind: str, spec: str, table: Mapping[str, type[T]], base: type[T], options: Mapping[str, Any]
) -> T:
    module_name, sep, attr = spec.partition(":")
    if spec in table:
        factory: Any = table[spec]
    elif not sep or not module_name or not attr:
        raise StrategyError(
            f"{kind} {spec!r}: choose one of {', '.join(table)} or name your own as "
            "package.module:attr"
        )
    else:
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


def options_help(table: Mapping[str, type], skip: frozenset[str] = frozenset({"lr"})) -> str:
    """The options the strategies of ``table`` take, from their signatures, for help texts:
    ``clip_norm (clipped_mean); byzantine=1, select=1 (krum)``; those that take the same
    are listed together."""
    takers: dict[str, list[str]] = {}
    for name, factory in table.items():
        params = [
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default}"
            for p in inspect.signature(factory).parameters.values()
            if p.name not in skip
        ]
        if params:
            takers.setdefault(", ".join(params), []).append(name)
    return "; ".join(f"{params} ({', '.join(names)})" for params, names in takers.items())


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
    "options_help",
]
