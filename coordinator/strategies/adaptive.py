"""Adaptive server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization", Alg. 2).

With the aggregated delta d (a pseudo-gradient pointing towards improvement, so the step
adds it), per coordinate and in float32:

    m = beta1 * m + (1 - beta1) * d
    v = second_moment(v, d)                  FedAdam, FedYogi or FedAdagrad
    theta = theta + lr * m / (sqrt(v) + tau)

m and v start at zero, made lazily from the first step's shapes, and there is no bias
correction, as in the paper; tau bounds the step while v is still small.

State (:meth:`MomentOptimizer.state`) is one float32 array per moment and tensor, keyed
``<moment>.<tensor name>`` (``m.w000:kernel``), where the tensor name is percent-encoded
(:func:`urllib.parse.quote`, ':' kept) so that it has no '/' whatever the model calls its
tensors; the key splits at its first '.', as no moment name has one.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from urllib.parse import quote, unquote

import numpy as np

from fedq.coordinator.strategies.base import ServerOptimizer, State, StrategyError, Weights


def state_key(moment: str, tensor: str) -> str:
    return f"{moment}.{quote(tensor, safe=':')}"


def check_rate(name: str, value: float, *, below_one: bool = False) -> float:
    """``value`` if it is a valid lr/tau (> 0) or, with below_one, a decay in [0, 1)."""
    ok = 0 <= value < 1 if below_one else math.isfinite(value) and value > 0
    if not ok:
        raise StrategyError(f"{name}={value}: it must be {'in [0, 1)' if below_one else '> 0'}")
    return float(value)


class MomentOptimizer(ServerOptimizer):
    """A server optimizer whose state is float32 buffers shaped like the model, one set per
    name in :attr:`moments`, zero until the first step (or as loaded)."""

    moments: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._buffers: dict[str, Weights] = {}

    def buffers_for(self, weights: Mapping[str, np.ndarray]) -> dict[str, Weights]:
        """A copy of the moment buffers (zeros if fresh) to fill and :meth:`keep`, so that a
        step that fails half-way leaves the state as it was. They must match ``weights``."""
        if not self._buffers:
            return {
                moment: {name: np.zeros(w.shape, dtype=np.float32) for name, w in weights.items()}
                for moment in self.moments
            }
        for buffers in self._buffers.values():
            if buffers.keys() != weights.keys() or any(
                b.shape != weights[name].shape for name, b in buffers.items()
            ):
                raise StrategyError(
                    f"{self.name}: the saved optimizer state does not fit this model's tensors; "
                    "resume with the model it was saved with or start a new state dir"
                )
        return {moment: dict(buffers) for moment, buffers in self._buffers.items()}

    def keep(self, buffers: dict[str, Weights]) -> None:
        """Make ``buffers`` (new arrays, never the old ones changed in place) the state."""
        self._buffers = buffers

    def state(self) -> State:
        return {
            state_key(moment, name): array.copy()
            for moment, buffers in self._buffers.items()
            for name, array in buffers.items()
        }

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        loaded: dict[str, Weights] = {moment: {} for moment in self.moments}
        for key, array in state.items():
            moment, dot, tensor = key.partition(".")
            if not dot or moment not in loaded:
                raise StrategyError(
                    f"{self.name}: state {key!r} is not one of its moments {self.moments}; "
                    "was it saved by another server optimizer?"
                )
            loaded[moment][unquote(tensor)] = np.array(array, dtype=np.float32)
        if len({frozenset(buffers) for buffers in loaded.values()}) > 1:
            raise StrategyError(f"{self.name}: the saved moments do not cover the same tensors")
        self._buffers = loaded if any(loaded.values()) else {}


class AdaptiveOptimizer(MomentOptimizer):
    moments = ("m", "v")

    def __init__(
        self, lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__()
        self.lr = check_rate("lr", lr)
        self.beta1 = check_rate("beta1", beta1, below_one=True)
        self.beta2 = check_rate("beta2", beta2, below_one=True)
        self.tau = check_rate("tau", tau)

    @abc.abstractmethod
    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The new v (float32) from the old one and this step's delta."""

    def step(self, weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Weights:
        buffers = self.buffers_for(weights)
        new: Weights = {}
        for name, w in weights.items():
            d = np.asarray(delta[name], dtype=np.float32)
            m = self.beta1 * buffers["m"][name] + (1 - self.beta1) * d
            v = self.second_moment(buffers["v"][name], d)
            buffers["m"][name], buffers["v"][name] = m, v
            new[name] = (w + self.lr * m / (np.sqrt(v) + self.tau)).astype(w.dtype, copy=False)
        self.keep(buffers)
        return new
