"""Where each process's time went, from py-spy's collapsed stacks.

    python bench/profile_summary.py DIR [--top 12]

DIR holds one ``<process>.txt`` per process, as ``round_overhead.py --processes --profile``
writes them (py-spy ``record --idle --threads --full-filenames --format raw``: one line
per distinct stack, ``thread (tid): name;frame (file:line);... count``). Each sample is
1/rate of a second of one thread, idle or not. Per process, per thread: the share of its
samples spent waiting (the event loop's ``select``, an idle worker thread) and where the
rest went, twice: by the innermost fedq function on the stack (what fedq code asked for
it, libraries below included), and by the innermost frame's library (what did the work:
aiormq, numpy, xxhash, sqlite3, ...). Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fedq import strict_json

_LINE = re.compile(r"^thread \((?P<tid>\d+)\): (?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):\d+\)$")
#: Innermost frames (function, file name) that mean the thread waits for something.
_WAITING = {
    ("select", "selectors.py"),  # the event loop, with nothing to do
    ("wait", "threading.py"),
    ("_wait_for_tstate_lock", "threading.py"),
    ("_worker", "thread.py"),  # an idle worker of asyncio.to_thread's pool
}


@dataclass
class ThreadProfile:
    name: str
    samples: int = 0
    idle: int = 0
    by_fedq: Counter[str] = field(default_factory=Counter)
    by_library: Counter[str] = field(default_factory=Counter)


def library_of(path: str) -> str:
    """The package a frame's file belongs to, or the stdlib module's name."""
    if "/fedq/" in path:
        return "fedq"
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    return Path(path).stem


def fedq_function(frames: list[str]) -> str:
    """The innermost frame of fedq's own code, as ``module.function``; ``-`` if none."""
    for frame in reversed(frames):
        match = _FRAME.match(frame)
        if match and "/fedq/" in match["file"]:
            module = match["file"].split("/fedq/", 1)[1].removesuffix(".py").replace("/", ".")
            return f"{module}.{match['func']}"
    return "-"


def read_profile(path: Path) -> dict[str, ThreadProfile]:
    threads: dict[str, ThreadProfile] = {}
    for line in path.read_text().splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        name, *frames = match["stack"].split(";")
        count = int(match["count"])
        thread = threads.setdefault(match["tid"], ThreadProfile(name))
        thread.samples += count
        leaf = _FRAME.match(frames[-1]) if frames else None
        # py-spy names methods by their class too (EpollSelector.select).
        waiting = leaf and (leaf["func"].rsplit(".", 1)[-1], Path(leaf["file"]).name)
        if leaf is None or waiting in _WAITING:
            thread.idle += count
            continue
        thread.by_fedq[fedq_function(frames)] += count
        thread.by_library[library_of(leaf["file"])] += count
    return threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    figures: dict[str, object] = {}
    for path in sorted(args.folder.glob("*.txt")):
        threads = read_profile(path)
        busiest = sorted(threads.values(), key=lambda t: t.samples - t.idle, reverse=True)
        print(f"\n== {path.stem}")
        shown = []
        for thread in busiest:
            busy = thread.samples - thread.idle
            if busy == 0:
                continue
            print(
                f"  thread {thread.name}: {thread.samples} samples, "
                f"{100 * thread.idle / thread.samples:.0f}% idle, {busy} busy"
            )
            for title, counter in (("fedq code", thread.by_fedq), ("library", thread.by_library)):
                print(f"    busy by {title}:")
                for key, count in counter.most_common(args.top):
                    print(f"      {100 * count / busy:5.1f}%  {key}")
            shown.append(
                {
                    "thread": thread.name,
                    "samples": thread.samples,
                    "idle": thread.idle,
                    "by_fedq": dict(thread.by_fedq.most_common(args.top)),
                    "by_library": dict(thread.by_library.most_common(args.top)),
                }
            )
        figures[path.stem] = shown
    print(strict_json.dumps({"bench": "profile_summary", "processes": figures}))


if __name__ == "__main__":
    main()
