"""What the learning benchmarks share: a Fashion-MNIST app with nothing trained yet, one
federation run in isolation, and the facts a result is only meaningful with.

Every run gets a fresh app instance: a KerasApp keeps each partition's model (and its
optimizer) between federations of one process, which would carry one run's training into
the next. After a run, Keras' global state (models, traced functions) is cleared, so a
long bench does not grow with every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import os
import platform
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from fedq.apps import fmnist
from fedq.apps.keras_app import KerasApp, import_keras, shard
from fedq.participant.app import Partition, TrainConfig

T = TypeVar("T")


def fresh_app(
    build: Callable[[], Any] = fmnist.build_model,
    train: TrainConfig | None = None,
    seed: int = fmnist.SEED,
    load_test: Callable[[], Any] | None = fmnist.load_test,
) -> KerasApp:
    """An fmnist app (its data, partitions and seed) around ``build``, no model built yet;
    ``seed`` draws the split and the initial model (the app's own is ``fmnist.SEED``), and
    ``load_test`` is what it evaluates on (None: it does not evaluate)."""

    def load_partition(partition: Partition) -> Any:
        return shard(fmnist.load_train(), partition, seed)

    return KerasApp(
        build,
        load_partition,
        load_test,
        seed=seed,
        train_config=train,
        check=fmnist.check_files,
    )


def run_isolated(coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one federation in its own event loop, then free what Keras kept of it."""
    try:
        return asyncio.run(coroutine())
    finally:
        import_keras().backend.clear_session()
        gc.collect()


def cpu() -> str:
    """The processor, as exactly as Linux tells it: machines of one name here ("AMD EPYC")
    have differed by a factor of two in training speed, so runs timed on different ones
    are not compared (``bench/async_vs_sync.py`` times a seed's arms on one CPU)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    l2 = Path("/sys/devices/system/cpu/cpu0/cache/index2/size")
    cache = l2.read_text().strip() if l2.exists() else "?"
    return (
        f"{fields.get('model name', platform.processor() or '?')} (family "
        f"{fields.get('cpu family', '?')}, model {fields.get('model', '?')}, stepping "
        f"{fields.get('stepping', '?')}, L2 {cache})"
    )


def provenance() -> dict[str, Any]:
    """Where and with what a result was measured."""
    versions = {}
    for package in ("fedq", "keras", "tensorflow-cpu", "tensorflow", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "data_seed": fmnist.SEED,
    }
