"""Helpers for integration tests: run the real `fedq` CLI, read the real broker's queues."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedq.messages.amqp import AmqpTransport
from fedq.messages.transport import Delivery

FEDQ = [sys.executable, "-m", "fedq.cli"]


def fedq_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["COLUMNS"] = "200"
    return env


def run_fedq(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDQ, *args], capture_output=True, text=True, timeout=timeout, env=fedq_env()
    )


def start_fedq(
    *args: str, log: Path, env: dict[str, str] | None = None, via: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """`fedq ARGS` as a process, its output into ``log``; ``env`` adds to the environment;
    ``via`` runs it through a command (``ip netns exec NS``)."""
    handle = log.open("wb")
    return subprocess.Popen(
        [*(via or []), *FEDQ, *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=fedq_env() | (env or {}),
    )


def wait_with_peak_rss(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """Wait for ``process`` to end; its exit code (negative: the signal that ended it) and
    its peak resident memory in MiB: VmHWM of /proc/PID/status, read every 50 ms while it
    runs (the kernel's high-water mark of the program's own memory, so also right for a
    process killed by SIGKILL). Not ``ru_maxrss``: that one survives exec, so it includes
    this test process's memory, which the child shared between fork and exec."""
    deadline = time.monotonic() + timeout
    peak_kib = 0
    status = Path(f"/proc/{process.pid}/status")
    while True:
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kib = max(peak_kib, int(line.split()[1]))
        if process.poll() is not None:
            return process.returncode, peak_kib / 1024
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(process.args, timeout)
        time.sleep(0.05)


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity, as jq and browsers do (Python accepts them)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not standard JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def read_report(path: Path) -> dict[str, Any]:
    return strict_loads(path.read_text())


async def drain(url: str, queue: str, quiet: float = 1.0) -> list[Delivery]:
    """Every message now in ``queue`` (acked: the test owns the queue)."""
    out: list[Delivery] = []
    async with AmqpTransport(url) as transport, transport.consume(queue, prefetch=100) as inbox:
        while True:
            try:
                delivery = await asyncio.wait_for(anext(inbox), quiet)
            except TimeoutError:
                return out
            await delivery.ack()
            out.append(delivery)


#: Runs a documentation snippet as a user would: a script, or, if it awaits at top level,
#: a notebook cell (compiled with top-level await, on a running event loop).
SNIPPET_RUNNER = """
import ast, asyncio, sys
source = open(sys.argv[1]).read()
code = compile(source, "snippet", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


def python_snippets(doc: Path) -> list[str]:
    """Every ```python block of ``doc``, in order."""
    blocks = doc.read_text().split("```python\n")[1:]
    return [block.split("```", 1)[0] for block in blocks]


def run_snippet(source: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """``source`` in a fresh interpreter, in ``folder``, its state dir in there too."""
    path = folder / "snippet.py"
    path.write_text(source)
    return subprocess.run(
        [sys.executable, "-c", SNIPPET_RUNNER, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=fedq_env() | {"FEDQ_STATE_DIR": str(folder / "state")},
        cwd=folder,
    )
