"""The table `pytest tests/faults tests/hostile` prints at the end: per fault or input kind,
how often it was tried, updates lost, updates applied twice, coordinator crashes (ones the
test did not cause) and the coordinator's peak RSS. A test adds its row with
:func:`record`; ``tests/conftest.py`` prints the rows and, with ``FEDQ_ARTIFACTS=1``, writes
them to ``tests/artifacts/faults.json``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FaultRow:
    kind: str
    tried: int
    lost: int
    applied_twice: int
    coordinator_crashes: int
    #: The coordinator's peak resident memory (``ru_maxrss``) over the test, MiB.
    peak_rss_mib: float


ROWS: list[FaultRow] = []


def record(row: FaultRow) -> None:
    ROWS.append(row)
