"""``sparse_mean``: the weighted mean for sparse updates (``topk``), where an entry a
participant did not send is not a vote for leaving it alone.

FedAvg divides each entry's weighted sum by the weight of every update. When each of ten
participants sends its own top 1%, an entry only one of them sent moves the model a tenth
of what that participant asked for, and error feedback does not make up for it (the
participant counts the entry as sent). Dividing by the weight of the updates that did send
the entry (``exponent=1``) moves it fully, but then one participant's view of an entry
stands for everyone's, and with non-IID data the model swings from round to round. Per
entry i this aggregation divides by a power mean of the two::

    result_i = sum_k w_k s_k delta_k,i / (W ** (1 - e) * C_i ** e)

W the weight of every update, C_i the weight of those whose entry i is nonzero (an exactly
zero entry counts as not sent), e = ``exponent`` in [0, 1], 0.5 by default; s_k the
staleness factor, as in the plain mean. With dense updates (C_i = W) it is FedAvg's mean,
and ``exponent=0`` is FedAvg's mean whatever the updates.

An attacker's view: an update alone on an entry moves it (W / w_k) ** e times further than
the plain mean would, so under ``--max-update-norm`` one update's effect on the model is
bounded by that factor more (sqrt(10) for ten equal participants at e = 0.5). Against
poisoning, use a robust aggregator; this one is for honest sparse updates.

The heaviest update's weight is not capped here (``max_weight_share``): the per-entry
divisor needs every sender's weight as claimed.

Memory: a second float32 buffer shaped like the model (C), so O(model) whatever the number
of updates; the fold stays streaming.
"""

from __future__ import annotations

import numpy as np

from fedq.coordinator.strategies.base import AggregationContext, Aggregator, Weights, blocks
from fedq.coordinator.strategies.mean import StreamingMean


class _SparseStreamingMean(StreamingMean):
    #: Its per-entry divisor counts the weight of every sender: not capped (see above).
    caps_weight = False

    def __init__(self, context: AggregationContext, exponent: float) -> None:
        super().__init__(context)
        self.exponent = exponent
        self._senders = {
            n: np.zeros(t.shape, dtype=np.float32) for n, t in context.template.items()
        }

    def _fold(
        self,
        name: str,
        at: int,
        block: np.ndarray,
        factor: np.float32,
        weight: float,
        scratch: np.ndarray,
        into: Weights,
    ) -> None:
        super()._fold(name, at, block, factor, weight, scratch, into)
        senders = self._senders[name].reshape(-1)[at : at + block.size]
        np.add(senders, np.float32(weight), out=senders, where=block != 0)

    def _normalise(self) -> None:
        e = self.exponent
        everyone = np.float32(self.total_weight ** (1 - e))
        for name, total in self._sums.items():
            flat = total.reshape(-1)
            senders = self._senders[name].reshape(-1)
            for offset, block in blocks(senders):
                divisor = np.power(block, np.float32(e)) * everyone
                part = flat[offset : offset + block.size]
                # Where nobody sent the entry its sum is 0 and stays 0.
                np.divide(part, divisor, out=part, where=block > 0)
        self._senders = {}


class SparseMean(Aggregator):
    """The weighted mean with each entry normalised by the weight that sent it (see the
    module's docstring); for federations whose participants send ``topk`` updates."""

    name = "sparse_mean"

    def __init__(self, exponent: float = 0.5) -> None:
        exponent = float(exponent)
        if not 0 <= exponent <= 1:
            raise ValueError(
                f"exponent={exponent}: it must be in [0, 1] (0 is FedAvg's mean, 1 the mean "
                "over the updates that sent each entry)"
            )
        self.exponent = exponent

    def start(self, context: AggregationContext) -> _SparseStreamingMean:
        return _SparseStreamingMean(context, self.exponent)
