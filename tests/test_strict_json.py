"""``fedq.strict_json``: what fedq writes as JSON parses in any reader, NaN included.

Python's own ``json.loads`` accepts NaN and Infinity, so every check parses with
``strict_loads``, which refuses them as jq or a browser would.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedq import strict_json
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.records import VersionRecord
from tests.helpers import run_fedq, strict_loads

pytestmark = pytest.mark.processes

figures = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


def same_but_missing_as_null(original: Any, parsed: Any) -> bool:
    if isinstance(original, float):
        return parsed is None if not math.isfinite(original) else parsed == original
    if isinstance(original, dict):
        return original.keys() == parsed.keys() and all(
            same_but_missing_as_null(original[key], parsed[key]) for key in original
        )
    if isinstance(original, list):
        return len(original) == len(parsed) and all(
            same_but_missing_as_null(a, b) for a, b in zip(original, parsed, strict=True)
        )
    return bool(original == parsed)


@given(figures)
def test_dumps_is_standard_json_with_non_finite_numbers_as_null(value: Any) -> None:
    line = strict_json.dumps(value)
    assert "\n" not in line
    assert same_but_missing_as_null(value, strict_loads(line))


def test_dumps_writes_nan_in_nested_tuples_as_null() -> None:
    figures = {"runs": [{"seconds": float("nan"), "load": (float("inf"), 0.5)}]}
    assert strict_loads(strict_json.dumps(figures)) == {
        "runs": [{"seconds": None, "load": [None, 0.5]}]
    }


def test_history_json_writes_a_nan_metric_as_null(tmp_path: Path) -> None:
    """A diverged model's loss (or a participant's NaN metric) is stored as NaN; ``fedq history
    --json`` still prints JSON that jq reads."""
    checkpoint = tmp_path / "model-v1.npz"
    checkpoint.write_bytes(b"checkpoint 1")
    ledger = UpdateLedger(tmp_path / "diverged" / "ledger.sqlite")
    metrics = {"loss": math.nan, "accuracy": 0.1, "spread": math.inf}
    ledger.commit_version(
        VersionRecord(1, 1, "quorum", 10.0, 1.0, 2.0, str(checkpoint), metrics), []
    )
    ledger.close()
    stored = sqlite3.connect(tmp_path / "diverged" / "ledger.sqlite")
    assert stored.execute("SELECT metrics FROM versions").fetchone()[0] == (
        '{"loss": NaN, "accuracy": 0.1, "spread": Infinity}'
    )
    stored.close()
    result = run_fedq("history", "--state-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    [row] = strict_loads(result.stdout)["rounds"]
    assert row["metrics"] == {"loss": None, "accuracy": 0.1, "spread": None}
