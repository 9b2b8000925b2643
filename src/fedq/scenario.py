"""Heterogeneity scenarios for experiments: who is slow, who drops out, whose network lags.

Each participant's profile becomes an :class:`~fedq.experiments.settings.Emulation`, which
wraps its app (:mod:`fedq.experiments`).

A scenario is a TOML file::

    seed = 7                    # picks the fraction groups and keys every dropout draw

    [default]                   # every participant not in a group
    dropout = 0.1               # skips each model with probability 0.1

    [[groups]]
    name = "stragglers"
    fraction = 0.3              # round(0.3 x N) participants, picked with the seed
    slowdown = 5.0              # 5x their real training time

    [[groups]]
    name = "far away"
    indices = [0]               # or name them
    delay_seconds = 2.0         # added to each round they train

What must stay true: groups are disjoint (a participant is in at most one); explicit
indices are claimed first, then each fraction group draws, in file order, from the
participants no group has yet; a group's profile is the default one with the fields the
group sets; the same scenario, seed and N give the same profiles on every machine. A bad
file is one line (:class:`ScenarioError`), never a traceback. Pure apart from reading the
file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedq.experiments.settings import Delay, Dropout, Emulation, Slowdown


class ScenarioError(ValueError):
    """The scenario cannot be used; the message says what is wrong, in one line."""


class Profile(BaseModel):
    """How one participant behaves: the ``[default]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slowdown: Slowdown = 1.0
    dropout: Dropout = 0.0
    delay_seconds: Delay = 0.0


class Group(BaseModel):
    """Some participants, by ``indices`` or by ``fraction``, and what they do differently
    from the default (a field left out keeps the default's value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    indices: list[Annotated[int, Field(ge=0)]] | None = None
    fraction: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    slowdown: Slowdown | None = None
    dropout: Dropout | None = None
    delay_seconds: Delay | None = None

    @model_validator(mode="after")
    def _one_selector(self) -> Group:
        if (self.indices is None) == (self.fraction is None):
            raise ValueError("a group selects participants by indices or by fraction (one)")
        if self.indices is not None and len(set(self.indices)) != len(self.indices):
            raise ValueError("a group names an index twice")
        return self

    def over(self, default: Profile) -> Profile:
        """``default`` with the fields this group sets."""
        changes = {
            name: value
            for name in Profile.model_fields
            if (value := getattr(self, name)) is not None
        }
        return default.model_copy(update=changes)


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: Annotated[int, Field(ge=0)] = 0
    default: Profile = Profile()
    groups: list[Group] = []


@dataclass(frozen=True)
class ParticipantProfile:
    """What participant ``index`` of N does in a scenario."""

    index: int
    slowdown: float = 1.0
    dropout: float = 0.0
    delay_seconds: float = 0.0
    #: The group's name (or ``group <i>``), None for the default profile.
    group: str | None = None

    def emulation(self, seed: int = 0, attack: str | None = None) -> Emulation:
        """What this profile emulates, its dropout drawn with ``seed``, sending ``attack``."""
        return Emulation(
            slowdown=self.slowdown,
            delay_seconds=self.delay_seconds,
            dropout=self.dropout,
            dropout_seed=seed,
            attack=attack,
        )

    def with_field(self, name: str, value: float) -> ParticipantProfile:
        """This profile with ``slowdown``, ``dropout`` or ``delay_seconds`` set to ``value``."""
        if name == "slowdown":
            return replace(self, slowdown=value)
        if name == "dropout":
            return replace(self, dropout=value)
        if name == "delay_seconds":
            return replace(self, delay_seconds=value)
        raise ValueError(f"not a profile field: {name}")


def load_scenario(path: Path) -> Scenario:
    """The scenario in ``path``, or ScenarioError naming the file and the first problem."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(f"scenario {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"scenario {path}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {path}: not valid TOML: {exc}") from None
    return parse_scenario(data, str(path))


def parse_scenario(data: dict[str, Any], source: str = "scenario") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {first_error(exc)}") from None


def first_error(exc: ValidationError) -> str:
    """``groups.1.fraction: Input should be less than or equal to 1`` (and how many more)."""
    errors = exc.errors()
    error = errors[0]
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (see docs/experiments.md for the format)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"


def fraction_count(fraction: float, n: int) -> int:
    """round(fraction x N), halves up (Python's round() would send 2.5 to 2)."""
    return int(np.floor(fraction * n + 0.5))


def profiles(scenario: Scenario, n: int) -> tuple[ParticipantProfile, ...]:
    """One profile per participant 0..N-1, or ScenarioError (an index >= N, fractions
    asking for more participants than remain)."""
    chosen: dict[int, int] = {}  # participant index -> group number
    for g, group in enumerate(scenario.groups):
        for i in group.indices or []:
            if i >= n:
                raise ScenarioError(f"{label(group, g)}: index {i} but there are {n} participants")
            if i in chosen:
                other = scenario.groups[chosen[i]]
                raise ScenarioError(
                    f"{label(group, g)}: participant {i} is already in "
                    f"{label(other, chosen[i])}; groups are disjoint"
                )
            chosen[i] = g
    for g, group in enumerate(scenario.groups):
        if group.fraction is None:
            continue
        free = [i for i in range(n) if i not in chosen]
        want = fraction_count(group.fraction, n)
        if want > len(free):
            raise ScenarioError(
                f"{label(group, g)}: fraction {group.fraction} of {n} is {want} participants "
                f"but only {len(free)} are in no earlier group"
            )
        rng = np.random.default_rng([scenario.seed, g])
        for i in rng.choice(free, size=want, replace=False) if want else []:
            chosen[int(i)] = g
    out = []
    for i in range(n):
        member = chosen.get(i)
        if member is None:
            p, name = scenario.default, None
        else:
            group = scenario.groups[member]
            p, name = group.over(scenario.default), label(group, member)
        out.append(ParticipantProfile(i, p.slowdown, p.dropout, p.delay_seconds, name))
    return tuple(out)


def label(group: Group, number: int) -> str:
    return group.name or f"group {number}"


#: flag -> (the profile field it sets, its least value, its greatest value, whether the
#: greatest value itself is excluded)
FLAGS: dict[str, tuple[str, float, float, bool]] = {
    "--slow": ("slowdown", 1.0, float("inf"), False),
    "--delay": ("delay_seconds", 0.0, float("inf"), False),
    "--dropout": ("dropout", 0.0, 1.0, True),
}


def with_flag(
    profiles: tuple[ParticipantProfile, ...], flag: str, values: list[str]
) -> tuple[ParticipantProfile, ...]:
    """``profiles`` with what ``--slow``, ``--delay`` or ``--dropout`` say: ``INDEX:NUMBER``
    for one participant, a bare ``NUMBER`` for every one; later values win, and a flag wins
    over the scenario file. ScenarioError on a malformed value."""
    name, low, high, open_high = FLAGS[flag]
    n = len(profiles)
    out = list(profiles)
    for value in values:
        index, sep, amount = value.rpartition(":")
        try:
            x = float(amount)
            chosen = [int(index)] if sep else list(range(n))
        except ValueError:
            raise ScenarioError(
                f"{flag} {value!r}: expected INDEX:NUMBER (one participant) or NUMBER (every "
                "one), e.g. 3:0.5"
            ) from None
        too_high = x >= high if open_high else x > high
        if not all(0 <= i < n for i in chosen) or x < low or too_high or x != x:
            upper = f" and NUMBER < {high:g}" if open_high else ""
            raise ScenarioError(
                f"{flag} {value!r}: need 0 <= INDEX < {n}, NUMBER >= {low:g}{upper}"
            )
        for i in chosen:
            out[i] = out[i].with_field(name, x)
    return tuple(out)


def describe(profiles: tuple[ParticipantProfile, ...], prefix: str = "p") -> list[str]:
    """One line per distinct behaviour, for the person starting a run:
    ``stragglers: p1, p4, p8 (slowdown 5, dropout 0.1, delay 0s)``."""
    groups: dict[tuple[str | None, float, float, float], list[int]] = {}
    for p in profiles:
        groups.setdefault((p.group, p.slowdown, p.dropout, p.delay_seconds), []).append(p.index)
    return [
        f"{name or 'default'}: {', '.join(f'{prefix}{i}' for i in members)} (slowdown "
        f"{slowdown:g}, dropout {dropout:g}, delay {delay:g}s)"
        for (name, slowdown, dropout, delay), members in groups.items()
    ]


def heterogeneous(profiles: tuple[ParticipantProfile, ...]) -> bool:
    """True if some participant does not behave as the plain default one."""
    return any(p != ParticipantProfile(p.index) for p in profiles)
