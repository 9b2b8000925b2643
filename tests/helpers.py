"""Helpers for integration tests: run the real `fedq` CLI, read the real broker's queues."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yarl
from prometheus_client.parser import text_string_to_metric_families

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.assembly import Assembler
from fedq.coordinator.observers import CoordinatorObserver, UpdateSeen
from fedq.coordinator.records import VersionSummary
from fedq.coordinator.verdicts import Admitted
from fedq.messages.amqp import PACED_WINDOW, AmqpTransport, lanes_of
from fedq.messages.codec import ModelSpec, Weights
from fedq.messages.schema import UpdateMeta
from fedq.messages.transport import Delivery, Locked, Transport, TransportError
from fedq.participant.app import Partition, TrainConfig, TrainResult
from fedq.runtime.peak_memory import vm_hwm_kib

FEDQ = [sys.executable, "-m", "fedq.cli"]

T = TypeVar("T")


def _truthy(value: object) -> bool:
    return bool(value)


def _timed_out(what: str, within: float, last: object) -> AssertionError:
    shown = repr(last)
    if len(shown) > 400:
        shown = shown[:400] + "..."
    return AssertionError(f"not within {within:g} s: {what} (last seen: {shown})")


def until(
    probe: Callable[[], T],
    done: Callable[[T], bool] = _truthy,
    *,
    what: str,
    within: float = 60.0,
    every: float = 0.05,
) -> T:
    """``probe()`` again every ``every`` s until ``done`` says yes; that value. The one
    bounded wait of the tests: a test waits for the state it needs (a consumer on a
    queue, a version in the ledger, a line of a process's output), never for a fixed time.
    When ``within`` s pass first it raises AssertionError naming ``what`` it waited for
    and the last value seen, so a wait never falls through silently. The bound is a
    ceiling for a hung system, not a timing claim: keep it generous."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, within, value)
        time.sleep(every)


async def until_async(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool] = _truthy,
    *,
    what: str,
    within: float = 60.0,
    every: float = 0.05,
) -> T:
    """`until` for an awaitable probe, sleeping on the event loop (never blocking it)."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, within, value)
        await asyncio.sleep(every)


async def while_progressing(
    work: Awaitable[T], progress: Callable[[], object], *, what: str, quiet: float
) -> T:
    """``work``'s result, waited for as long as it makes progress: fails, naming ``what``,
    once ``progress()`` has not changed for ``quiet`` seconds (``work`` is then cancelled).
    For work whose length depends on the machine's load: a hang shows as no progress, and
    a slow machine does not fail the test."""
    task = asyncio.ensure_future(work)
    last, since = progress(), time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if done:
                return task.result()
            if (now := progress()) != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > quiet:
                raise AssertionError(f"{what}: no progress for {quiet:g} s (at {last!r})")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def polled(read: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """``read`` as a probe for `until_async`: state this event loop's own tasks change (a
    counter of an in-process coordinator or participant)."""

    async def probe() -> T:
        return read()

    return probe


def until_line(
    log: Path,
    text: str,
    process: subprocess.Popen[bytes] | None = None,
    *,
    count: int = 1,
    within: float = 120.0,
) -> str:
    """Wait until ``log`` holds ``count`` lines containing ``text``; the log then. Fails
    at once (with the log) if ``process`` ended first: it will never write the line."""

    def read() -> str:
        return log.read_text(errors="replace") if log.exists() else ""

    def seen(content: str) -> bool:
        if sum(text in line for line in content.splitlines()) >= count:
            return True
        if process is not None and process.poll() is not None:
            raise AssertionError(f"ended ({process.returncode}) before {text!r}:\n{read()}")
        return False

    return until(read, seen, what=f"{count} x {text!r} in {log.name}", within=within)


def fedq_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["COLUMNS"] = "200"
    return env


#: How long one fedq command of a test may run: under pytest's own timeout (600 s), so that
#: a command that hangs fails with what it printed and where its threads were.
FEDQ_TIMEOUT = 420.0


def run_fedq(
    *args: str, timeout: float = FEDQ_TIMEOUT, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``fedq ARGS`` to its end; AssertionError after ``timeout`` seconds, with its Python
    stacks (py-spy, where installed) and the end of its output."""
    process = subprocess.Popen(
        [*FEDQ, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=fedq_env(), cwd=cwd,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stacks = python_stacks(process.pid)
        process.kill()
        out, err = process.communicate()
        raise AssertionError(
            f"fedq {' '.join(args)} did not end within {timeout:g} s; its threads:\n{stacks}\n"
            f"its output ends:\n{out[-3000:]}\n{err[-5000:]}"
        ) from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def python_stacks(pid: int) -> str:
    """Every thread's stack of process ``pid`` (``py-spy dump``), native frames among the
    Python ones where py-spy can read them (a hang inside TensorFlow shows only there),
    else the Python ones alone; or why not."""
    spy = Path(sys.executable).with_name("py-spy")
    why = ""
    for extra in (["--native"], []):
        try:
            dumped = subprocess.run(
                [str(spy), "dump", "--pid", str(pid), *extra],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = f"(py-spy dump failed: {exc})"
            continue
        if dumped.returncode == 0 and dumped.stdout:
            return dumped.stdout
        why = f"(py-spy dump: {dumped.stderr.strip()})"
    return why


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


def wait_with_peak_rss(
    process: subprocess.Popen[bytes], timeout: float, each: Callable[[], object] = lambda: None
) -> tuple[int, float]:
    """Wait for ``process`` to end; its exit code (negative: the signal that ended it) and
    its peak resident memory in MiB: VmHWM of /proc/PID/status, read every 50 ms while it
    runs (the kernel's high-water mark of the program's own memory, so also right for a
    process killed by SIGKILL). Not ``ru_maxrss``: that one survives exec, so it includes
    this test process's memory, which the child shared between fork and exec. ``each`` is
    called at every reading (to let go a process a failpoint stopped, say)."""
    deadline = time.monotonic() + timeout
    peak_kib = 0
    while True:
        each()
        peak_kib = max(peak_kib, vm_hwm_kib(process.pid) or 0)
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


#: Consumers a collecting coordinator keeps on its updates queue: on its connection of its
#: own, its bodies in hand are paced by pausing the socket's reads, and the broker's window
#: is PACED_WINDOW, one lane (``_Inbox`` in messages/amqp.py).
COORDINATOR_CONSUMERS = lanes_of(PACED_WINDOW)[1]


async def consumers_on(transport: Transport, queue: str) -> int:
    """Consumers on ``queue`` now; -1 while the queue does not exist yet."""
    try:
        return await transport.queue_consumers(queue)
    except TransportError:
        return -1


async def until_consumers_async(
    url: str, queue: str, count: int = 1, *, within: float = 120.0
) -> None:
    """Wait until ``queue`` has exactly ``count`` consumers (0: its consumer left)."""
    async with AmqpTransport(url) as transport:
        await until_async(
            lambda: consumers_on(transport, queue),
            lambda n: n == count,
            what=f"{count} consumer(s) on {queue}",
            within=within,
            every=0.1,
        )


async def took_lock(transport: Transport, name: str) -> bool:
    """Whether ``transport`` could take the lock ``name`` now (then it holds it): a probe
    for `until_async` while another holder is going."""
    try:
        await transport.hold(name)
    except Locked:
        return False
    return True


def until_consumers(url: str, queue: str, count: int = 1, *, within: float = 120.0) -> None:
    """`until_consumers_async` from synchronous code (a test driving `fedq` processes)."""
    asyncio.run(until_consumers_async(url, queue, count, within=within))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BrokerRelay:
    """A TCP relay in front of RabbitMQ: stopping it is, to its clients, the broker going
    away, and starting it again the broker coming back."""

    def __init__(self, target: yarl.URL) -> None:
        self.target = (target.host or "127.0.0.1", target.port or 5672)
        self.url = str(target.with_host("127.0.0.1").with_port(free_port()))
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        port = yarl.URL(self.url).port
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", port)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream = await asyncio.open_connection(*self.target)
        self._open |= {writer, upstream}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()
            self._open.discard(sink)

        await asyncio.gather(pipe(reader, upstream), pipe(upstream_reader, writer))


def metric_total(url: str, name: str) -> float:
    """The sum of every series ``name`` scraped from the Prometheus endpoint ``url``; -1
    while the endpoint does not answer yet."""
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.TransportError:
        return -1.0
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


class UpdatesSeen(CoordinatorObserver):
    """How many updates an in-process coordinator has taken, folded or settled: its
    progress, while it drains a flood of refusals as much as while it folds."""

    def __init__(self) -> None:
        self.count = 0

    def update_seen(self, seen: UpdateSeen) -> None:
        self.count += 1


class Commits(CoordinatorObserver):
    """The last version an in-process coordinator committed, for a participant's training
    thread to wait on (a straggler made late by the events it must miss, not by a delay
    that a loaded machine may stretch past the others')."""

    def __init__(self) -> None:
        self.version = 0
        self._changed = threading.Condition()

    def version_committed(self, row: VersionSummary) -> None:
        with self._changed:
            self.version = row.version
            self._changed.notify_all()

    def wait_for(self, version: int, within: float = 120.0) -> None:
        """Block (a worker thread, never the event loop) until ``version`` is committed."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.version >= version, within):
                raise AssertionError(f"v{version} not committed within {within:g} s")


class Straggler(SyntheticApp):
    """The synthetic app, whose participants in ``late`` train on the newest committed
    model v only once ``until(v)`` is committed (at most ``last``, the federation's last
    version, which always comes): their update is late by construction. Training runs
    in a worker thread: waiting there blocks no event loop."""

    def __init__(
        self,
        params: int,
        commits: Commits,
        *,
        late: set[int],
        until: Callable[[int], int],
        last: int,
    ) -> None:
        super().__init__(params=params)
        self.commits = commits
        self.late = late
        self.until = until
        self.last = last

    def train(self, weights: Weights, partition: Partition, config: TrainConfig) -> TrainResult:
        if partition.index in self.late:
            self.commits.wait_for(min(self.until(self.commits.version), self.last))
        return super().train(weights, partition, config)


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


class BodyOnly:
    """A delivery as the assembler reads it: its body, nothing else (pure tests)."""

    def __init__(self, body: bytes) -> None:
        self.body = body


def roomy_assembler(
    folder: Path, spec: ModelSpec, chunk_bytes: int, *, max_streams: int = 4
) -> Assembler:
    """An assembler spooling to ``folder`` with room for any pure test's updates: no norm
    bound, a minute before a stream is incomplete, four streams a participant."""
    return Assembler(
        folder,
        spec,
        max_bytes=1 << 30,
        max_norm=None,
        max_streams=max_streams,
        timeout_seconds=60.0,
        chunk_bytes=chunk_bytes,
        max_per_participant=4,
    )


class AdmitFresh:
    """A version that admits every update as fresh (an Admission for the intake)."""

    def held_digest(self, update_id: str, chunk: int) -> str | None:
        return None

    def admit(self, meta: UpdateMeta, user: str | None) -> Admitted:
        return Admitted(staleness=0, scale=1.0)
