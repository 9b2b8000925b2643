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


#: The parts whose size the architecture bounds: a function a reader takes in at once.
LONGEST_FUNCTION = 60
BOUNDED_PARTS = ("coordinator", "participant", "messages", "runtime", "experiments", "src/fedq/cli")


def test_no_function_of_the_bounded_parts_is_longer_than_a_screen():
    found = {
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)"
        for part in BOUNDED_PARTS
        for path in sorted((ROOT / part).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := (node.end_lineno or node.lineno) - node.lineno + 1) > LONGEST_FUNCTION
    }
    assert not found


def test_the_coordinator_service_is_its_loop_and_each_command_a_page():
    """service.py keeps the loop, restore, open and commit; every other concern has a room
    of its own. A command module reads like a page of the tutorial."""
    assert len((ROOT / "coordinator" / "service.py").read_text().splitlines()) <= 350
    long_commands = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "src" / "fedq" / "cli").glob("*.py")
        if len(path.read_text().splitlines()) > 250
    }
    assert not long_commands


DOC = ROOT / "docs" / "architecture.md"
#: The folders whose every module docs/architecture.md's map names.
MAPPED = ("messages", "runtime", "coordinator", "participant", "experiments", "src/fedq")


def doc_section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def table_rows(section: str) -> list[list[str]]:
    """Each table row's cells, the header and the rule left out."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ")
    ]
    return [r for r in rows if not set(r[0]) <= set("-: ") and r[0] not in ("module", "folder")]


def ticked(cell: str) -> list[str]:
    return [part for i, part in enumerate(cell.split("`")) if i % 2]


def named_modules() -> set[str]:
    """The module paths the folder map names: a row's own path, or a folder row's files."""
    named = set()
    for cells in table_rows(doc_section("What each folder holds")):
        head = ticked(cells[0])
        if not head:
            continue
        if head[0].endswith(".py"):
            named.add(head[0])
        elif head[0].count("/") > 1 or head[0].startswith("src/fedq/"):  # a sub-package row
            named.update(head[0] + name for name in ticked(cells[-1]) if name.endswith(".py"))
    return named


def test_the_folder_map_names_every_module_and_nothing_that_is_gone():
    named = named_modules()
    existing = {
        str(path.relative_to(ROOT))
        for folder in MAPPED
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "__init__.py"
    }
    assert existing - named == set(), "modules the map in docs/architecture.md does not name"
    gone = {path for path in named if not (ROOT / path).is_file()}
    assert gone == set(), "modules docs/architecture.md names that do not exist"


def defined_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_where_a_change_goes_names_paths_and_definitions_that_exist():
    """Each row of the table names files and folders that exist, and every class, constant
    or function it names is defined in one of the files of its row."""
    problems = []
    for cells in table_rows(doc_section("Where does a change go")):
        tokens = [t for cell in cells[1:] for t in ticked(cell)]
        paths = [t for t in tokens if "/" in t and not t.startswith("-")]
        problems += [f"{t}: no such path" for t in paths if not (ROOT / t).exists()]
        defined = set().union(
            *(defined_names(ROOT / p) for p in paths if p.endswith(".py") and (ROOT / p).is_file())
        )
        for token in tokens:
            code = token.isidentifier() and (token[0].isupper() or "_" in token)
            if code and token not in defined:
                problems.append(f"{token}: defined in none of {paths} ({cells[0]})")
    assert not problems


# ---------------------------------------------------------------- waits in the tests
#: The comment that lets one sleep through, with why: ``# sleep-ok: pacing the attacker``.
SLEEP_OK = "# sleep-ok:"


def _is_sleep(node: ast.AST) -> bool:
    """``time.sleep(...)``, ``asyncio.sleep(...)`` or a bare ``sleep(...)``, awaited or not."""
    if isinstance(node, ast.Await):
        node = node.value
    if not isinstance(node, ast.Call):
        return False
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    return name == "sleep"


def _own_nodes(statements: list[ast.stmt]) -> list[ast.AST]:
    """Every node under ``statements``, not looking into nested functions or classes (their
    code runs elsewhere)."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = list(statements)
    while todo:
        node = todo.pop()
        out.append(node)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            todo.extend(ast.iter_child_nodes(node))
    return out


def _fails(statements: list[ast.stmt]) -> bool:
    return any(isinstance(n, ast.Assert | ast.Raise) for n in _own_nodes(statements))


def _blocks(tree: ast.AST) -> list[list[ast.stmt]]:
    """Every statement list of ``tree``: bodies, else branches, handlers, finally blocks."""
    blocks = []
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                blocks.append(block)
    return blocks


def unbounded_waits(source: str) -> list[str]:
    """What the tests may not do to wait, as ``line: why``:

    - a sleep statement outside a loop with an assertion after it in its block: the
      assertion then rests on the sleep having been long enough;
    - a loop that sleeps (a wait) with no failing end: nothing in it asserts or raises and
      the statement after it neither, so when the time runs out the test goes on as if
      the state it waited for had come.

    ``tests/helpers.py``'s ``until``/``until_async`` do both right. A line carrying
    ``# sleep-ok: <why>`` is let through (pacing an attacker, an interval under test)."""
    lines = source.splitlines()
    found = []

    def allowed(node: ast.AST) -> bool:
        return SLEEP_OK in lines[getattr(node, "lineno", 1) - 1]

    for block in _blocks(ast.parse(source)):
        for i, statement in enumerate(block):
            after = block[i + 1 :]
            if (
                isinstance(statement, ast.Expr)
                and _is_sleep(statement.value)
                and _fails(after)
                and not allowed(statement)
            ):
                found.append(f"{statement.lineno}: a fixed sleep, then an assertion")
            if not isinstance(statement, ast.For | ast.AsyncFor | ast.While):
                continue
            sleeps = [n for n in _own_nodes(statement.body) if _is_sleep(n)]
            if not sleeps or any(allowed(n) for n in sleeps) or allowed(statement):
                continue
            ends = [*statement.body, *statement.orelse, *after[:1]]
            if not _fails(ends):
                found.append(f"{statement.lineno}: a wait loop that ends without failing")
    return found


@pytest.mark.parametrize(
    "source",
    [
        "def test():\n    time.sleep(3)\n    assert joins() == 2",
        "async def test():\n    await asyncio.sleep(0.5)\n    n = count()\n    assert n <= 1",
        "def test():\n    for _ in range(100):\n        if ready():\n            break\n"
        "        time.sleep(0.1)\n    go_on()",
        "async def test():\n    while time.monotonic() < deadline:\n        if await ready():\n"
        "            break\n        await asyncio.sleep(0.1)",
        "def test():\n    with open_thing():\n        sleep(1)\n        assert thing.done",
    ],
)
def test_a_wait_that_rests_on_time_is_found(source):
    assert unbounded_waits(source)


@pytest.mark.parametrize(
    "source",
    [
        "def test():\n    until(ready, what='ready')\n    assert thing.done",
        "def test():\n    for _ in range(100):\n        if ready():\n            break\n"
        "        time.sleep(0.1)\n    else:\n        raise AssertionError('not ready')",
        "def test():\n    while not ready():\n        assert time.monotonic() < deadline\n"
        "        time.sleep(0.1)\n    assert thing.done",
        "def test():\n    for _ in range(50):\n        if depth() == 3:\n            break\n"
        "        time.sleep(0.1)\n    assert depth() == 3",
        "def test():\n    for kill in kills:\n        time.sleep(1)  # sleep-ok: paces the kills\n"
        "        kill()",
        "def test():\n    time.sleep(1)  # sleep-ok: the interval under test\n    assert x",
    ],
)
def test_a_bounded_wait_or_a_justified_sleep_is_let_through(source):
    assert not unbounded_waits(source)


def test_no_test_waits_on_a_fixed_time_or_falls_through_a_wait():
    """Tests synchronise on the state they need (a consumer on a queue, a version in the
    ledger, a line of output) through ``tests/helpers.py``'s bounded waits, which fail
    naming what they waited for: a fixed sleep passes on a fast machine and fails, or
    worse passes wrongly, on a loaded one."""
    found = [
        f"{path.relative_to(ROOT)}:{where}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for where in unbounded_waits(path.read_text())
    ]
    assert not found
