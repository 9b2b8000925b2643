"""Model-poisoning attacks, for robustness experiments only: a participant configured with
one is malicious and sends a forged delta instead of the one it trained.

Forms of a spec (``--malicious 0:scale:-10``, ``--attack sign_flip``):

- ``scale:F``: send F x delta, F finite. F = -10 is the boosted, reversed update that
  drags a plain weighted mean far the wrong way.
- ``sign_flip``: send -delta, the same size as an honest update, pointing backwards.

Pure numpy: the forged delta keeps each tensor's name, shape and dtype, so it passes the
coordinator's checks like an honest one (unless a norm bound catches it). :class:`Poisoned`
makes an app send it (``transform_delta``, before the update codec).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedq.experiments.wrapper import AppWrapper
from fedq.messages.codec import Weights
from fedq.participant.app import App

FORMS = "scale:FACTOR (e.g. scale:-10) or sign_flip"


@dataclass(frozen=True)
class Attack:
    """Multiply every value of the delta by ``factor`` (both attacks are this, so far)."""

    spec: str
    factor: float

    def apply(self, delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The forged delta: new arrays, ``delta`` is left as it was."""
        return {name: np.multiply(d, self.factor, dtype=d.dtype) for name, d in delta.items()}


def parse_attack(spec: str) -> Attack:
    """The attack a spec names; ValueError (one line, naming the valid forms) otherwise."""
    kind, colon, argument = spec.strip().partition(":")
    if kind == "sign_flip" and not colon:
        return Attack("sign_flip", -1.0)
    if kind == "scale" and colon:
        try:
            factor = float(argument)
        except ValueError:
            factor = math.nan
        if math.isfinite(factor):
            return Attack(f"scale:{factor:g}", factor)
    raise ValueError(f"attack {spec!r}: expected {FORMS}")


class Poisoned(AppWrapper):
    """``app``, its every delta forged by ``attack`` before it is sent."""

    def __init__(self, app: App, attack: Attack) -> None:
        super().__init__(app)
        self.attack = attack

    def transform_delta(self, delta: Weights) -> Weights:
        return self.attack.apply(super().transform_delta(delta))
