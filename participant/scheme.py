"""What a partition scheme is: its name and number, as ``--partition-scheme`` spells it.

The schemes themselves (how each splits a dataset) are :mod:`fedq.participant.partitions`;
this is the small value a :class:`~fedq.participant.app.Partition` carries to the app.
``SCHEMES`` is the registry every help text and error lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["iid", "dirichlet", "labels", "quantity", "noise"]

#: Every scheme: its spec and what it skews, in the order help texts list them.
SCHEMES: dict[Kind, tuple[str, str]] = {
    "iid": ("iid", ""),
    "dirichlet": ("dirichlet:BETA", "label skew"),
    "labels": ("labels:K", "K labels each"),
    "quantity": ("quantity:BETA", "size skew"),
    "noise": ("noise:SIGMA", "feature noise"),
}


def _one_of(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1]


#: The forms of a spec, for errors: ``iid, dirichlet:BETA, ... or noise:SIGMA``.
FORMS = _one_of([spec for spec, _ in SCHEMES.values()]) + " (e.g. dirichlet:0.5)"
#: The forms with what each skews, for help texts.
DESCRIBED = _one_of([f"{spec} ({skew})" if skew else spec for spec, skew in SCHEMES.values()])


@dataclass(frozen=True)
class Scheme:
    """A partitioning scheme; ``value`` is beta, k or sigma (None for ``iid``)."""

    kind: Kind = "iid"
    value: float | None = None

    @classmethod
    def parse(cls, spec: str) -> Scheme:
        kind, sep, raw = spec.strip().lower().partition(":")
        if kind == "iid" and not sep:
            return cls()
        if kind not in SCHEMES or kind == "iid" or not raw:
            raise ValueError(f"partition scheme {spec!r}: expected {FORMS}")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"partition scheme {spec!r}: {raw!r} is not a number") from None
        if kind == "labels":
            if not value.is_integer() or value < 1:
                raise ValueError(f"partition scheme {spec!r}: K must be a whole number >= 1")
        elif kind == "noise":
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"partition scheme {spec!r}: SIGMA must be >= 0")
        elif not (np.isfinite(value) and value > 0):
            raise ValueError(f"partition scheme {spec!r}: BETA must be > 0")
        return cls(kind, value)

    def __str__(self) -> str:
        if self.value is None:
            return self.kind
        shown = int(self.value) if self.kind == "labels" else self.value
        return f"{self.kind}:{shown}"


#: The default: a seeded shuffle cut into equal slices.
IID = Scheme()
