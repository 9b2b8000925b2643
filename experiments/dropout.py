"""Dropout for experiments: whether a participant skips a model it was sent.

:class:`DropsOut` makes an app decline (``accepts``) the models the draw says: the
participant acks each, trains nothing and sends nothing for it.

The draw is keyed by (seed, participant id, model version), not taken from a running
random stream, so it does not depend on which models a participant happened to see: the
newest-only model queue makes a slow participant skip versions, and a stream would then
shift every later draw. Keyed, a participant drops the very same versions in every run of
the same seed, and a test can say in advance which ones. Pure: no I/O.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fedq.experiments.wrapper import AppWrapper
from fedq.participant.app import App


def participant_key(participant: str) -> int:
    """A stable 64-bit number for an id (``hash()`` of a str changes from run to run)."""
    return int.from_bytes(hashlib.blake2b(participant.encode(), digest_size=8).digest(), "big")


def drops_out(seed: int, participant: str, version: int, probability: float) -> bool:
    """True if ``participant`` skips model ``version``: it acks the model, trains nothing
    and sends nothing for it. Each (seed, participant, version) is an independent draw that
    comes out True with ``probability``; 0 never drops, 1 always does."""
    if probability <= 0.0:
        return False
    if probability >= 1.0:
        return True
    draw = np.random.default_rng(
        [seed % 2**64, participant_key(participant), version % 2**64]
    ).random()
    return bool(draw < probability)


class DropsOut(AppWrapper):
    """``app``, declining each model with ``probability``, drawn per version from ``seed``
    and the participant's id (:func:`drops_out`), so a run can be reproduced."""

    def __init__(self, app: App, participant: str, probability: float, seed: int = 0) -> None:
        super().__init__(app)
        self.participant = participant
        self.probability = probability
        self.seed = seed

    def accepts(self, version: int) -> bool:
        if drops_out(self.seed, self.participant, version, self.probability):
            return False
        return super().accepts(version)
