"""Another commit of fedq, installed apart, so a benchmark can run it beside this checkout.

A regression shows best when both sides run in one sitting on one loaded machine, taking
turns (``round_overhead.py --against REV``). The commit is exported with ``git archive``
(no work tree is touched) and installed with pip into a folder of its own (``--target``,
its dependencies taken from this environment); its ``fedq`` command runs with that folder
first on ``PYTHONPATH``, which shadows this checkout's editable install. Checked, not
assumed: the command must import fedq from that folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class InstalledCommit:
    sha: str
    #: The commit's own ``fedq`` command, and what its environment must add.
    command: str
    env: dict[str, str]


def _git(*args: str) -> bytes:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], check=True, capture_output=True
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"git {' '.join(args)}: {exc.stderr.decode().strip()}") from None


@contextlib.contextmanager
def installed_commit(rev: str) -> Iterator[InstalledCommit]:
    """``rev`` (any name git knows) installed into a temporary folder, for the block."""
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}").decode().strip()
    with tempfile.TemporaryDirectory(prefix=f"fedq-{sha[:8]}-") as folder:
        source, site = Path(folder) / "source", Path(folder) / "site"
        with tarfile.open(fileobj=io.BytesIO(_git("archive", "--format=tar", sha))) as tar:
            # Our own repository's archive; the "data" filter where this Python has it
            # (Debian's 3.11.2 predates it).
            if hasattr(tarfile, "data_filter"):
                tar.extraction_filter = tarfile.data_filter
            tar.extractall(source)
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
        subprocess.run([*pip, "--target", str(site), str(source)], check=True)
        env = {"PYTHONPATH": str(site)}
        imported = subprocess.run(
            [sys.executable, "-c", "import fedq; print(fedq.__file__)"],
            env=os.environ | env, check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        if not Path(imported).is_relative_to(site):
            raise SystemExit(f"commit {sha[:8]}: fedq still imports from {imported}")
        yield InstalledCommit(sha, str(site / "bin" / "fedq"), env)
