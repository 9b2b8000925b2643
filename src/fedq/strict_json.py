"""JSON that every consumer can parse: a figure that is not a finite number is null.

Python's json module writes NaN and Infinity, which are not JSON (RFC 8259): jq, browsers'
JSON.parse and most other readers reject the whole document. A diverged model's loss, a
participant's reported metric or a benchmark figure that could not be measured can be
NaN, and ``fedq history --json``, ``--report``, the dashboard's API and every benchmark's
last line must still parse. So they all write through ``dumps``, which turns such numbers
into null and refuses (ValueError) rather than emit a non-standard document.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float, however deeply nested, replaced by None
    (tuples become lists, as JSON writes them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dumps(
    value: Any,
    *,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    default: Callable[[Any], Any] | None = None,
) -> str:
    """``json.dumps`` of ``finite(value)`` that never writes NaN or Infinity."""
    return json.dumps(
        finite(value), indent=indent, separators=separators, default=default, allow_nan=False
    )
