"""Checks an update must pass before it touches the accumulator. Pure: no I/O.

Each failure is a :class:`Rejection` with a short machine-readable ``reason`` (the part of
``x-fedq-reason`` before the colon) and a sentence for a person.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedq.messages.codec import WireTensor


@dataclass(frozen=True)
class Rejection(Exception):
    reason: str
    detail: str

    def header(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: np.dtype


ModelSpec = Mapping[str, TensorSpec]


def spec_of(weights: Mapping[str, np.ndarray]) -> dict[str, TensorSpec]:
    return {name: TensorSpec(tuple(w.shape), w.dtype) for name, w in weights.items()}


def check_tensors(
    tensors: list[WireTensor], spec: ModelSpec, max_norm: float | None = None
) -> dict[str, np.ndarray]:
    """The update's deltas by name, or Rejection: names, shapes, dtypes, finite values, and
    (if ``max_norm`` is set) the L2 norm of the whole delta, a first guard against an update
    scaled up to drag the model (model replacement)."""
    names = [t.name for t in tensors]
    if set(names) != set(spec):
        missing = sorted(set(spec) - set(names))
        extra = sorted(set(names) - set(spec))
        raise Rejection("tensor_mismatch", f"missing {missing[:5]}, unexpected {extra[:5]}")
    for t in tensors:
        want = spec[t.name]
        if t.shape != want.shape:
            raise Rejection(
                "shape_mismatch",
                f"tensor {t.name!r} has shape {list(t.shape)}, model has {list(want.shape)}",
            )
        if t.dtype != want.dtype:
            raise Rejection(
                "dtype_mismatch", f"tensor {t.name!r} is {t.dtype}, model has {want.dtype}"
            )
    for t in tensors:
        if not np.isfinite(t.array).all():
            raise Rejection("non_finite", f"tensor {t.name!r} holds NaN or infinity")
    if max_norm is not None:
        norm = update_norm([t.array for t in tensors])
        if norm > max_norm:
            raise Rejection("norm_exceeded", f"update L2 norm {norm:.4g} > bound {max_norm:.4g}")
    return {t.name: t.array for t in tensors}


def update_norm(arrays: list[np.ndarray]) -> float:
    """L2 norm over every value of every tensor, accumulated in float64."""
    total = 0.0
    for a in arrays:
        flat = a.reshape(-1)
        if flat.dtype != np.float32 and flat.dtype != np.float64:
            flat = flat.astype(np.float32)  # fp16 squares overflow: widen first
        total += float(np.dot(flat, flat))
    return float(np.sqrt(total))
