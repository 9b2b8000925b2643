"""Error feedback: what a lossy codec drops this round is sent in later rounds.

A lossy codec (``int8``, ``topk``, ``fp16``) is stateless; the memory of what it dropped
is the participant's. Each round the participant encodes ``delta + residual`` instead of
``delta`` and keeps as the new residual the part the coordinator will not see::

    corrected = delta + residual
    sent      = decode(encode(corrected))      # exactly what the coordinator folds
    residual  = corrected - sent

So after T rounds, sum(sent) + residual == sum(delta) (up to float rounding): nothing is
lost, only delayed. Without it ``topk`` would never send the many small entries of a delta;
with it they accumulate until they are among the largest (Stich et al., 2018; Karimireddy
et al., 2019).

The residual assumes every update it helped encode is folded. An update the coordinator
refuses (stale, late, over the norm bound) or a round the participant never hears of still
counts as sent: the residual is not restored, so that round's dropped part is carried on
and its sent part is lost, as it is without compression. Restoring it would need the
coordinator to tell participants which updates it folded, which it does not.

``topk`` also lets its residual fade: what is carried into the next round is 0.85 x the
residual (:data:`RESIDUAL_DECAY`), so the invariant above holds only up to that decay.
With 1% sent a round the residual otherwise grows round after round, made of deltas
computed against older models; sent late, in one piece, those entries pushed the model
back and forth from round to round.

``topk:F`` picks its entries across the whole update, not per tensor: the ``F`` x (float
entries of the update) largest magnitudes of ``delta + residual``, wherever they are, are
sent (:func:`keep_largest`) and encoded as exactly those entries (``wire_codec``, topk of
the nonzeros). Per tensor, a bias of 10 values would get its 1 entry whatever its
gradients, and a convolution of 150 weights 2; one threshold lets the tensors whose entries
move most take the budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from fedq.messages.chunks import DEFAULT_CHUNK_BYTES, plan_chunks
from fedq.messages.codec import Weights
from fedq.messages.codecs import LOSSLESS, TensorCodec, get_codec
from fedq.messages.codecs.topk import TopKCodec

#: Codec name -> the factor of the residual carried into the next round (1 if absent).
#: For topk, the decay that ended closest to raw among those tried (bench/README.md,
#: "Compression", has the runs): a residual kept whole keeps pushing stale directions.
RESIDUAL_DECAY = {"topk": 0.85}
#: Entries looked at at once while selecting (8 MiB of float64 magnitudes): selection needs this and
#: a pool of k magnitudes, never a copy of the update.
BLOCK = 1 << 20


class ErrorFeedback:
    """One participant's residual per tensor name, for updates encoded with ``codec``."""

    def __init__(self, codec: str, decay: float | None = None) -> None:
        self.codec_name = codec
        self.codec = get_codec(codec)
        #: The factor of the residual carried into the next round (see RESIDUAL_DECAY).
        self.decay = RESIDUAL_DECAY.get(self.codec.name, 1.0) if decay is None else decay
        self.residual: Weights = {}
        self._select = isinstance(self.codec, TopKCodec) and self.codec.fraction is not None

    @property
    def wire_codec(self) -> str | TensorCodec:
        """What the tensors :meth:`compress` returns are encoded with: for topk, each
        tensor's nonzero entries (the selection is already made); else the codec."""
        return TopKCodec(fraction=None) if self._select else self.codec_name

    @staticmethod
    def wanted(codec: str) -> bool:
        """Whether ``codec`` loses anything, so that feedback pays for its memory."""
        return get_codec(codec).name not in LOSSLESS

    def compress(self, delta: Weights, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Weights:
        """The tensors to encode this round: ``delta`` plus the carried residual. Encoding
        them with the codec, cut into the chunks ``chunk_bytes`` makes
        (:func:`~fedq.messages.chunks.plan_chunks`), yields exactly what the coordinator
        sees (codecs are deterministic and see the same slices); the residual becomes the
        rest. Non-float tensors pass unchanged. For topk the tensors returned are what is
        sent: the selected entries, zero elsewhere (encode them with ``wire_codec``)."""
        corrected: Weights = {}
        owned: set[str] = set()  # sums made here, not the caller's arrays
        for name, values in delta.items():
            if np.issubdtype(values.dtype, np.floating):
                carried = self.residual.get(name)
                if carried is not None and carried.shape == values.shape:
                    if self.decay != 1:
                        carried *= carried.dtype.type(self.decay)
                    values = np.add(values, carried, dtype=values.dtype)
                    owned.add(name)
            corrected[name] = values
        if self._select:
            return self._keep_largest(corrected, owned)
        for slices in plan_chunks(corrected, chunk_bytes):
            for part in slices:
                values = corrected[part.name]
                if not np.issubdtype(values.dtype, np.floating):
                    continue
                residual = self.residual.get(part.name)
                if residual is None or residual.shape != values.shape:
                    residual = self.residual[part.name] = np.empty_like(values)
                flat = values.reshape(-1)[part.start : part.stop]
                sent = self.codec.decode(self.codec.encode(flat), values.dtype, flat.shape)
                np.subtract(
                    flat, sent, out=residual.reshape(-1)[part.start : part.stop], dtype=values.dtype
                )
        return corrected

    def _keep_largest(self, corrected: Weights, owned: set[str]) -> Weights:
        floats = {n: v for n, v in corrected.items() if np.issubdtype(v.dtype, np.floating)}
        assert isinstance(self.codec, TopKCodec)
        k = self.codec.k_for(sum(v.size for v in floats.values())) if floats else 0
        sent = dict(corrected)
        for name, kept in keep_largest(floats, k):
            values = floats[name]
            # The rest is the residual, written over the sum this method made if it did.
            self.residual[name] = np.subtract(
                values, kept, out=values if name in owned else None, dtype=values.dtype
            )
            sent[name] = kept
        return sent

    def reset(self) -> None:
        """Forget the residual (e.g. when the model's shapes change)."""
        self.residual.clear()


def keep_largest(tensors: Weights, k: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, kept) for each of float ``tensors``: ``kept`` holds the ``k`` entries of
    largest magnitude across all of them (ties broken by position, NaN counted as largest)
    as the coordinator will decode them (float32 values), zero elsewhere. Memory besides
    the outputs: a pool of k magnitudes and one block of :data:`BLOCK` entries."""
    threshold, above = _kth_largest(tensors.values(), k)
    ties = k - above  # entries equal to the threshold still to keep, first come first kept
    for name, values in tensors.items():
        flat = values.reshape(-1)
        kept = np.zeros_like(flat)
        for start in range(0, flat.size, BLOCK):
            block = flat[start : start + BLOCK]
            magnitude = _magnitude(block)
            chosen = magnitude > threshold
            if ties > 0:
                at = np.flatnonzero(magnitude == threshold)[:ties]
                chosen[at] = True
                ties -= at.size
            # What the coordinator decodes: topk's values travel as float32.
            kept[start : start + BLOCK][chosen] = block[chosen].astype(np.float32)
        yield name, kept.reshape(values.shape)


def _magnitude(block: np.ndarray) -> np.ndarray:
    """|block| in float64, NaN as inf. The selection pass must compare each entry to the
    threshold in the same precision the pool found it in: float32's 0.001 is above
    float64's 0.001 in float64 but equal to it in float32, which would keep one too few."""
    magnitude: np.ndarray = np.abs(block, dtype=np.float64)
    magnitude[np.isnan(magnitude)] = np.inf
    return magnitude


def _magnitudes(arrays: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for values in arrays:
        flat = values.reshape(-1)
        for start in range(0, flat.size, BLOCK):
            yield _magnitude(flat[start : start + BLOCK])


def _kth_largest(arrays: Iterable[np.ndarray], k: int) -> tuple[float, int]:
    """(the k-th largest magnitude in ``arrays``, how many magnitudes are larger than it);
    (inf, 0) if k is 0, so nothing is kept. The pool ends as the k largest magnitudes, so
    every one larger than the k-th is in it: no second pass over the update counts them."""
    if k <= 0:
        return float("inf"), 0
    pool = np.empty(0, np.float64)
    for magnitude in _magnitudes(arrays):
        pool = np.concatenate([pool, magnitude])
        if pool.size > k:
            pool = np.partition(pool, pool.size - k)[pool.size - k :]
    if pool.size < k:
        return 0.0, int(np.count_nonzero(pool > 0))
    threshold = float(pool.min())
    return threshold, int(np.count_nonzero(pool > threshold))
