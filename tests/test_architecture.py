"""Dependencies point one way: the CLI side (fedq, fedq.apps) uses the coordinator, the
participant, the wire and the runtime; the coordinator and the participant use the wire
and the runtime, never the CLI side nor each other; the wire and the runtime use nothing
else of fedq."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: folder -> the fedq packages its modules may import
ALLOWED = {
    "messages": ("fedq.messages",),
    "runtime": ("fedq.runtime",),
    "coordinator": ("fedq.coordinator", "fedq.messages", "fedq.runtime"),
    "participant": ("fedq.participant", "fedq.messages", "fedq.runtime"),
}


def fedq_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [n for n in names if n == "fedq" or n.startswith("fedq.")]


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_a_part_imports_only_what_it_may(folder):
    allowed = ALLOWED[folder]
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in fedq_imports(path)
        if not any(name == a or name.startswith(a + ".") for a in allowed)
    }
    assert not found
