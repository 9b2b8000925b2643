"""Large models over RabbitMQ: seconds per round and peak memory, deployment-shaped.

One ``fedq coordinator`` and N ``fedq participant`` processes (``fedq.apps.synthetic:app``
with ``FEDQ_SYNTHETIC_PARAMS`` = P float32 values), quorum N, models and updates chunked at
4 MiB (``--chunk-mb``). Reports seconds per round (the ledger's commits, median from round 2), each
process's peak RSS (``VmHWM``) as a multiple of the model's size, and whether the final
model is exactly the FedAvg of every update (the synthetic app's oracle).

    python bench/large_model.py                      # 100 MB and 500 MB, N = 4 and 8
    python bench/large_model.py --params 25000000 --participants 4 --rounds 3

Not yet here: the raw aio-pika floor moving the same chunks in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint

BROKER = os.environ.get("FEDQ_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
FEDQ = [sys.executable, "-m", "fedq.cli"]


def peak_rss(pid: int) -> int:
    """VmHWM of a live process, bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run(params: int, n: int, rounds: int, chunk_bytes: int) -> dict[str, float | int | bool]:
    federation = f"large-{uuid.uuid4().hex[:8]}"
    env = os.environ | {"FEDQ_SYNTHETIC_PARAMS": str(params), "TF_CPP_MIN_LOG_LEVEL": "3"}
    where = ["--federation", federation, "--broker", BROKER, "--app", "fedq.apps.synthetic:app"]
    where += ["--chunk-bytes", str(chunk_bytes)]
    with tempfile.TemporaryDirectory(prefix="fedq-large-") as folder:
        state = Path(folder) / "state"
        shape = ["--participants", str(n), "--rounds", str(rounds), "--linger", "0"]
        coordinator = subprocess.Popen(
            [*FEDQ, "coordinator", *where, *shape, "--state-dir", str(state)],
            env=env, stdout=(Path(folder) / "c.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        participants = [
            subprocess.Popen(
                [*FEDQ, "participant", *where, "--id", f"p{i}", "--partition", f"{i}/{n}"],
                env=env,
                stdout=(Path(folder) / f"p{i}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            for i in range(n)
        ]
        peaks = {p.pid: 0 for p in [coordinator, *participants]}
        while coordinator.poll() is None:
            for pid in peaks:
                peaks[pid] = max(peaks[pid], peak_rss(pid))
            time.sleep(0.2)
        for p in participants:
            p.wait(timeout=120)
        if coordinator.returncode != 0:
            raise SystemExit((Path(folder) / "c.log").read_text()[-3000:])
        subprocess.run(
            [*FEDQ, "teardown", "--federation", federation, "--broker", BROKER],
            env=env, capture_output=True, check=False,
        )  # fmt: skip
        ledger = sqlite3.connect(state / federation / "ledger.sqlite")
        commits = [
            row[0] for row in ledger.execute("SELECT committed_at FROM versions ORDER BY version")
        ]
        ledger.close()
        final = load_checkpoint(checkpoint_path(state / federation / "models", rounds))
        expected = rounds * SyntheticApp.fedavg_step(range(n))
        exact = all(np.allclose(t, expected, rtol=1e-5) for t in final.values())
    model = params * 4
    steps = [b - a for a, b in itertools.pairwise(commits)]
    return {
        "params": params,
        "model_mb": round(model / 1e6, 1),
        "participants": n,
        "chunk_mib": round(chunk_bytes / 2**20, 2),
        "rounds": rounds,
        "seconds_per_round": round(statistics.median(steps), 2) if steps else float("nan"),
        "coordinator_peak_x_model": round(peaks[coordinator.pid] / model, 2),
        "coordinator_peak_mib": round(peaks[coordinator.pid] / 2**20),
        "participant_peak_x_model": round(max(peaks[p.pid] for p in participants) / model, 2),
        "exact_fedavg": bool(exact),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, nargs="*", default=[25_000_000, 125_000_000])
    parser.add_argument("--participants", type=int, nargs="*", default=[4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-mb", type=float, default=4)
    args = parser.parse_args()
    chunk = int(args.chunk_mb * 2**20)
    rows = [run(p, n, args.rounds, chunk) for p in args.params for n in args.participants]
    head = list(rows[0])
    print(" | ".join(head))
    for row in rows:
        print(" | ".join(str(row[k]) for k in head))
    print(json.dumps({"bench": "large_model", "runs": rows}))


if __name__ == "__main__":
    main()
