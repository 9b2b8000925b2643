"""Every benchmark ends with one line of standard JSON, even when a figure is missing.

The fast system benchmarks run here end to end, with small flags, against the real RabbitMQ
(the learning ones take minutes and are run by hand, bench/README.md). Their last line is
parsed with a parser that rejects NaN and Infinity, which Python's json module would
otherwise write and read without complaint but jq, JavaScript and most consumers refuse.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import strict_loads

pytestmark = pytest.mark.processes

BENCH = Path(__file__).resolve().parent.parent / "bench"

FAST_BENCHMARKS = {
    "codec": ["--repeat", "1"],
    "consume": ["--messages", "3", "--megabytes", "0.5", "--turns", "1"],
    # One small flood and the two baselines: three federations of 3 rounds.
    "hostile": [
        "--attacks",
        "bad-updates",
        "--rounds",
        "3",
        "--delay",
        "0.3",
        "--params",
        "10000",
        "--scale",
        "0.05",
    ],
    "aggregate": ["--repeat", "1", "--params", "1000000"],
    "chunked_path": ["--params", "1500000", "--repeat", "1"],
    "large_model": ["--params", "1000000", "--participants", "2", "--rounds", "2"],
    "round_overhead": [
        "--processes",
        "--participants",
        "3",
        "--params",
        "100000",
        "--rounds",
        "2",
        "--repeat",
        "1",
        # Against this very commit, installed apart: the comparison runs end to end.
        "--against",
        "HEAD",
        "--pairs",
        "1",
        "--floor-pairs",
        "2",
    ],
    "scale": ["--participants", "10", "--params", "10000", "--rounds", "2"],
}


@pytest.mark.broker
@pytest.mark.parametrize("name", sorted(FAST_BENCHMARKS))
def test_benchmark_ends_with_one_line_of_standard_json(name: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *FAST_BENCHMARKS[name]],
        cwd=BENCH.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = strict_loads(done.stdout.strip().splitlines()[-1])
    assert figures["bench"] == name
    if name == "round_overhead":
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=BENCH, capture_output=True, text=True, check=True
        ).stdout.strip()
        (row,) = figures["rows"]
        assert row["against"]["commit"] == head and len(row["against"]["ratios"]) == 1
        pairs = row["floor_pairs"]  # two of fedq and its floor; the first is the row's own
        assert pairs["fedq_s_per_round"][0] == row["processes"]["fedq"]["seconds_per_round"]
        assert len(pairs["ratios"]) == 2 and all(r > 0 for r in pairs["ratios"])


def test_large_model_refuses_one_round_with_one_line() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "large_model.py"), "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith("--rounds must be at least 2: a round's time is between two commits")
    )


@pytest.mark.broker
def test_a_profiled_round_says_where_each_process_spent_its_time(tmp_path: Path) -> None:
    """``round_overhead.py --profile``: py-spy samples each fedq process of the deployment
    shape, and ``profile_summary.py`` sums each up by thread and library."""
    flags = ["--processes", "--participants", "2", "--params", "100000", "--rounds", "2"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "round_overhead.py"), *flags, "--repeat", "1",
         "--profile", str(tmp_path)],
        cwd=BENCH.parent, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = subprocess.run(
        [sys.executable, str(BENCH / "profile_summary.py"), str(tmp_path / "P100000")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert summary.returncode == 0, summary.stderr[-2000:]
    figures = strict_loads(summary.stdout.strip().splitlines()[-1])
    assert set(figures["processes"]) == {"coordinator", "p0", "p1"}
    threads = {t["thread"]: t for t in figures["processes"]["coordinator"]}
    main = threads["MainThread"]
    assert main["samples"] > main["idle"] > 0
    # Busy stacks are put down to fedq's own code: the coordinator's parts show.
    assert any(name.startswith("coordinator.") for t in threads.values() for name in t["by_fedq"])
