"""Dependencies point one way: the CLI side (fedq, fedq.apps) uses the coordinator, the
participant, the wire and the runtime; the coordinator and the participant use the wire
and the runtime, never the CLI side nor each other; the wire and the runtime use nothing
else of fedq. Experiments wrap the participant's apps; the production participant knows
nothing of them."""

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
    "experiments": ("fedq.experiments", "fedq.participant", "fedq.messages", "fedq.runtime"),
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


#: What a module reads the environment through: ``os.environ``, ``os.getenv`` (imported from
#: os or not), or a pydantic-settings model.
ENVIRONMENT_READERS = frozenset({"environ", "environb", "getenv", "getenvb"})


def environment_reads(source: str) -> list[int]:
    """The lines of ``source`` that read the environment."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Name):
            names = [node.id]
        else:
            continue
        if any(
            name.rpartition(".")[2] in ENVIRONMENT_READERS or name.startswith("pydantic_settings")
            for name in names
        ):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize(
    "source",
    [
        "import os\nsize = int(os.environ.get('FEDQ_CHUNK_BYTES', '4'))",
        "import os\nsize = os.getenv('FEDQ_CHUNK_BYTES')",
        "from os import environ\nsize = environ['FEDQ_CHUNK_BYTES']",
        "from pydantic_settings import BaseSettings",
    ],
)
def test_an_environment_read_is_found(source):
    assert environment_reads(source)


def test_the_wire_reads_no_environment_variable():
    """Every setting of ``messages/`` arrives as an argument: what two processes must agree
    on cannot then differ by the environment each was started in."""
    found = {
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted((ROOT / "messages").rglob("*.py"))
        for line in environment_reads(path.read_text())
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
