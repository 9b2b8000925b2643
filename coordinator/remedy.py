"""Async mode's remedy for stragglers (``--async-remedy``), applied to a version's delta.

Between the aggregation's result and the server step: CA2FL's calibration by each
participant's cached update (:class:`~.update_cache.UpdateCache`), the mean of the cached
local models (MIFA, rebased), or FADAS's
delay-adaptive step (the delta scaled by eta_t / eta, so it works with any server
optimizer: for FedAvg it is exactly FADAS's step size, for an adaptive optimizer it
scales the pseudo-gradient it is given). The maths is :mod:`.strategies.remedies`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.records import UpdateRecord
from fedq.coordinator.strategies.base import Aggregation, Weights
from fedq.coordinator.strategies.remedies import delay_adaptive_lr
from fedq.coordinator.update_cache import UpdateCache

#: Under the state dir: ``--async-remedy cached``'s entries (each participant's latest
#: local model; ``update-cache``, which held deltas, was its name before they were).
CACHE_FOLDER = "local-models"


class Remedy:
    """The federation's remedy: nothing (``none``), or one of the two."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        #: ``cached``, ``cached_mean``: each participant's latest update (made by
        #: :meth:`restore`).
        self.cache: UpdateCache | None = None

    def restore(self, weights: Mapping[str, np.ndarray], version: int) -> None:
        """Before the first version: the cache as committed up to model ``version``."""
        if self.config.caches_updates:
            state = self.config.state_dir
            self.cache = UpdateCache(state / CACHE_FOLDER, weights, state / "models")
            self.cache.restore(version)

    def result(
        self,
        aggregation: Aggregation,
        records: Sequence[UpdateRecord],
        model: Weights,
        version: int,
    ) -> Weights:
        """The version's delta on ``model`` (model ``version``): the aggregation's result
        (``records`` folded), remedied."""
        delta = aggregation.result()
        apply_remedy(self.config, records, delta, model, version, self.cache)
        return delta

    def committed(self) -> None:
        """The version is committed: its cached updates replace the older entries."""
        if self.cache is not None:
            self.cache.commit()


def apply_remedy(
    config: CoordinatorConfig,
    records: Sequence[UpdateRecord],
    delta: Weights,
    model: Weights,
    version: int,
    cache: UpdateCache | None,
) -> None:
    """Change ``delta`` (the aggregate of ``records`` on ``model``, model ``version``) in
    place as the remedy says."""
    if config.async_remedy == "cached":
        assert cache is not None, "made when the coordinator prepares"
        contributors = [(r.participant, float(r.num_examples), r.base_version) for r in records]
        for name, correction in cache.correction(contributors, model, version).items():
            delta[name] += correction
    elif config.async_remedy == "cached_mean":
        assert cache is not None, "made when the coordinator prepares"
        delta.update(cache.mean_step(model))
    elif config.async_remedy == "delay_adaptive":
        tau_max = max(r.staleness for r in records)
        lr = config.server_lr
        scale = np.float32(delay_adaptive_lr(lr, tau_max, config.delay_threshold) / lr)
        if scale != 1:
            for name, tensor in delta.items():
                out = tensor if tensor.flags.writeable else None
                delta[name] = np.multiply(tensor, scale, out=out)
