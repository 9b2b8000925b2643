"""Dependencies point one way: the CLI side (fedq, fedq.apps) uses the coordinator, the
participant and the wire; the coordinator and the wire never import the CLI side, and the
coordinator and the participant never import each other. Experiments wrap the participant's
apps; the production participant knows nothing of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: folder -> the fedq packages its modules may import
ALLOWED = {
    "messages": ("fedq.messages",),
    "coordinator": ("fedq.coordinator", "fedq.messages"),
    "participant": ("fedq.participant", "fedq.messages"),
    "experiments": ("fedq.experiments", "fedq.participant", "fedq.messages"),
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


def test_the_production_participant_imports_nothing_from_experiments():
    """Stragglers, dropout and attacks are wrappers around an app (fedq.experiments): the
    participant that runs in production has no branch for them."""
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "participant").rglob("*.py"))
        for name in fedq_imports(path)
        if name.startswith("fedq.experiments")
    }
    assert not found
