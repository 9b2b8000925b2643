"""Every `fedq simulate` example in the README and docs/ finishes.

An example a reader copies must not hang or fail on a flag: each one is run as written,
except for what only makes it fast here: the app (``fedq.apps.synthetic:app``, whose
training takes milliseconds), at most 2 versions and 20 participants, and a state dir of
the test's own. Its flags, its mode, quorum and scenario stay as the docs give them, so a
combination that cannot finish (a quorum that dropout makes unreachable, no deadline)
fails here.
"""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path

import pytest

from tests.helpers import run_fedq

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Flags whose value is replaced to keep the run small, and by what.
SMALL = {"--rounds": "2", "-r": "2", "--app": "fedq.apps.synthetic:app"}
MAX_PARTICIPANTS = 20
#: Flags of a path, pointed into the test's own directory.
PATHS = {"--tensorboard-dir", "--report", "--state-dir"}


def examples() -> list[tuple[str, str]]:
    """(where, command) for each `fedq simulate` line of a fenced code block."""
    found = []
    for doc in DOCS:
        inside = False
        for line in doc.read_text().replace("\\\n", " ").splitlines():
            if line.lstrip().startswith("```"):
                inside = not inside
                continue
            command = line.split(" #")[0].strip().removeprefix("$ ")
            if inside and command.startswith("fedq simulate"):
                found.append((f"{doc.name}: {command[:60]}", command))
    return found


def small(command: str, tmp_path: Path, federation: str) -> list[str]:
    args = shlex.split(command)[2:]  # after "fedq simulate"
    out: list[str] = []
    it = iter(args)
    for arg in it:
        flag, eq, value = arg.partition("=")
        if flag in SMALL or flag in PATHS or flag in ("-n", "--participants", "--mlflow-uri"):
            given = value if eq else next(it)
            if flag in SMALL:
                given = SMALL[flag]
            elif flag in PATHS:
                given = str(tmp_path / flag.strip("-"))
            elif flag == "--mlflow-uri":
                given = f"sqlite:///{tmp_path / 'mlflow.db'}"
            else:
                given = str(min(int(given), MAX_PARTICIPANTS))
            out += [flag, given]
        else:
            out.append(arg)
    if not any(a in ("--rounds", "-r") for a in out):
        out += ["--rounds", "2"]
    if "--app" not in out:
        out += ["--app", SMALL["--app"]]
    if "--state-dir" not in out:
        out += ["--state-dir", str(tmp_path / "state")]
    if "--broker" in out and "--federation" not in out:
        out += ["--federation", federation]  # the fixture's: cleared from the broker after
    # Fewer participants: a quorum above them shrinks in proportion.
    n = next((int(v) for f, v in itertools.pairwise(args) if f in ("-n", "--participants")), 0)
    if n > MAX_PARTICIPANTS:
        for flag in ("--quorum", "--min-quorum"):
            if flag in out:
                at = out.index(flag) + 1
                out[at] = str(max(1, int(out[at]) * MAX_PARTICIPANTS // n))
    return out


def test_the_docs_have_simulate_examples():
    assert len(examples()) >= 10


@pytest.mark.parametrize(
    ("where", "command"),
    [
        pytest.param(where, command, id=where, marks=[pytest.mark.broker] * ("--broker" in command))
        for where, command in examples()
    ],
)
def test_a_documented_simulate_example_finishes(tmp_path, federation, where, command):
    args = small(command, tmp_path, federation)
    # MLflow keeps a SQLite store's artifacts in ./mlruns: in the test's folder, not here.
    cwd = tmp_path if "--mlflow-uri" in args else None
    result = run_fedq("simulate", *args, timeout=300, cwd=cwd)
    assert result.returncode == 0, f"{where}\n{' '.join(args)}\n{result.stdout}{result.stderr}"
