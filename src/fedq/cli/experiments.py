"""The experiment flags of ``simulate``: who is slow, lags, drops out (a ``--scenario``
file, ``--slow``, ``--delay``, ``--dropout``) or sends poisoned updates (``--malicious``).
A malformed value is one line naming the flag. (``fedq participant``'s own are fields of
:class:`~fedq.experiments.settings.Emulation`.)"""

from __future__ import annotations

from pathlib import Path

from fedq.cli.running import fail
from fedq.console import console
from fedq.coordinator.config import CoordinatorConfig
from fedq.experiments.attacks import parse_attack
from fedq.scenario import (
    ParticipantProfile,
    Scenario,
    ScenarioError,
    describe,
    load_scenario,
    profiles,
    with_flag,
)


def describe_heterogeneity(
    config: CoordinatorConfig, found: tuple[ParticipantProfile, ...], seed: int
) -> None:
    """Each distinct behaviour in one line; a run that dropout would stall is refused.

    A participant that drops a model sends nothing for that version, and no other model
    comes until it is committed: with ``--min-quorum`` equal to K, a version short of one
    update would extend its deadline forever."""
    if any(p.dropout > 0 for p in found) and config.min_k == config.k > 1:
        raise fail(
            f"with dropout, a version can get fewer than its {config.k} updates and would wait "
            f"for them forever: give --min-quorum below K (e.g. --min-quorum "
            f"{config.k - 1}) and a --round-timeout it may close at"
        )
    for line in describe(found):
        console.print(f"heterogeneity (seed {seed}): {line}", highlight=False)


def heterogeneity(
    scenario: Path | None, flags: dict[str, list[str] | None], n: int
) -> tuple[tuple[ParticipantProfile, ...], int]:
    """Each participant's slowdown, dropout and delay: the ``--scenario`` file's, then what
    ``--slow``, ``--delay`` and ``--dropout`` say; and the seed of the dropout draws."""
    try:
        chosen = Scenario() if scenario is None else load_scenario(scenario)
        found = profiles(chosen, n)
        for flag, values in flags.items():
            found = with_flag(found, flag, values or [])
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    return found, chosen.seed


def check_attack(flag: str, spec: str) -> str:
    try:
        parse_attack(spec)
    except ValueError as exc:
        raise fail(f"{flag}: {exc}") from None
    return spec


def parse_malicious(values: list[str], n: int) -> tuple[tuple[int, str], ...]:
    """``--malicious INDEX:ATTACK`` into (index, attack spec) pairs, one per index."""
    found: dict[int, str] = {}
    for value in values:
        index, _, spec = value.partition(":")
        try:
            i = int(index)
        except ValueError:
            raise fail(
                f"--malicious {value!r}: expected INDEX:ATTACK, e.g. 0:scale:-10 or 1:sign_flip"
            ) from None
        if not 0 <= i < n:
            raise fail(f"--malicious {value!r}: need 0 <= INDEX < {n}")
        if i in found:
            raise fail(f"--malicious {value!r}: participant {i} already has an attack")
        found[i] = check_attack(f"--malicious {value!r}", spec)
    return tuple(sorted(found.items()))
