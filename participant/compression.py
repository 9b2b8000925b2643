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
"""

from __future__ import annotations

import numpy as np

from fedq.messages.chunks import DEFAULT_CHUNK_BYTES, plan_chunks
from fedq.messages.codec import Weights
from fedq.messages.codecs import LOSSLESS, get_codec


class ErrorFeedback:
    """One participant's residual per tensor name, for updates encoded with ``codec``."""

    def __init__(self, codec: str) -> None:
        self.codec_name = codec
        self.codec = get_codec(codec)
        self.residual: Weights = {}

    @staticmethod
    def wanted(codec: str) -> bool:
        """Whether ``codec`` loses anything, so that feedback pays for its memory."""
        return get_codec(codec).name not in LOSSLESS

    def compress(self, delta: Weights, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Weights:
        """The tensors to encode this round: ``delta`` plus the carried residual. Encoding
        them with the codec, cut into the chunks ``chunk_bytes`` makes
        (:func:`~fedq.messages.chunks.plan_chunks`), yields exactly what the coordinator
        sees (codecs are deterministic and see the same slices); the residual becomes the
        rest. Non-float tensors pass unchanged."""
        corrected: Weights = {}
        for name, values in delta.items():
            if np.issubdtype(values.dtype, np.floating):
                carried = self.residual.get(name)
                if carried is not None and carried.shape == values.shape:
                    values = np.add(values, carried, dtype=values.dtype)
            corrected[name] = values
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

    def reset(self) -> None:
        """Forget the residual (e.g. when the model's shapes change)."""
        self.residual.clear()
