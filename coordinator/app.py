"""What the coordinator needs of an app: the first model and, optionally, an evaluation.

Declared here so the coordinator depends on no participant or CLI code: any object with
these two methods will do (every fedq app has them).
"""

from __future__ import annotations

from typing import Protocol

from fedq.messages.codec import Weights


class CoordinatorApp(Protocol):
    def initial_weights(self) -> Weights:
        """Model version 0, in model order; the same in every process."""
        ...

    def evaluate(self, weights: Weights) -> dict[str, float] | None:
        """Held-out ``loss`` and ``accuracy`` of a committed model, or None. Runs in a
        worker thread."""
        ...
