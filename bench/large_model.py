"""Large models over RabbitMQ: seconds per round and peak memory, deployment-shaped.

One ``fedq coordinator`` and N ``fedq participant`` processes (``fedq.apps.synthetic:app``
with ``FEDQ_SYNTHETIC_PARAMS`` = P float32 values), quorum N, models and updates chunked at
4 MiB (``--chunk-mb``). Reports seconds per round (the ledger's commits, median from round 2), each
process's peak RSS (``VmHWM``) as a multiple of the model's size, and whether the final
model is exactly the FedAvg of every update (the synthetic app's oracle).

    python bench/large_model.py                      # 100 MB and 500 MB, N = 4 and 8
    python bench/large_model.py --params 25000000 --participants 4 --rounds 3

Next to each fedq run, in the same run, the raw aio-pika floor of
``bench/round_overhead.py --processes`` (``bench/deployment_shape.py``) moves the same
chunk bodies in the same shape: N participant processes, each confirming its update's
chunks one after another, and the coordinator side fanning out the model's chunks, each
confirmed in turn, as fedq does.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
from deployment_shape import run_raw_processes

from fedq import strict_json
from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.checkpoint import checkpoint_path, load_checkpoint
from fedq.messages.chunks import encode_chunks
from fedq.messages.schema import ModelMeta, UpdateMeta
from fedq.runtime.peak_memory import vm_hwm_kib

BROKER = os.environ.get("FEDQ_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
FEDQ = [sys.executable, "-m", "fedq.cli"]


def run(params: int, n: int, rounds: int, chunk_bytes: int) -> dict[str, float | int | bool]:
    federation = f"large-{uuid.uuid4().hex[:8]}"
    env = os.environ | {"FEDQ_SYNTHETIC_PARAMS": str(params), "TF_CPP_MIN_LOG_LEVEL": "3"}
    where = ["--federation", federation, "--broker", BROKER, "--app", "fedq.apps.synthetic:app"]
    with tempfile.TemporaryDirectory(prefix="fedq-large-") as folder:
        state = Path(folder) / "state"
        shape = ["--participants", str(n), "--rounds", str(rounds), "--linger", "0"]
        shape += ["--chunk-bytes", str(chunk_bytes)]  # the participants follow its models
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
                peaks[pid] = max(peaks[pid], (vm_hwm_kib(pid) or 0) * 1024)
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
        "seconds_per_round": round(statistics.median(steps), 2),
        "coordinator_peak_x_model": round(peaks[coordinator.pid] / model, 2),
        "coordinator_peak_mib": round(peaks[coordinator.pid] / 2**20),
        "participant_peak_x_model": round(max(peaks[p.pid] for p in participants) / model, 2),
        "exact_fedavg": bool(exact),
    }


def raw_floor(params: int, n: int, rounds: int, chunk_bytes: int) -> float:
    """Seconds per round of the raw floor moving fedq's chunk bodies for this shape."""
    app = SyntheticApp(params=params)
    weights = app.initial_weights()
    model = ModelMeta(federation="floor", version=0, round=1, rounds_total=rounds)
    model_chunks = list(encode_chunks(model, weights, "raw", chunk_bytes))
    update = UpdateMeta(federation="floor", participant="p0", round=1, base_version=0,
                        num_examples=app.num_examples(0))  # fmt: skip
    delta = {k: w + np.float32(app.delta_value(0)) for k, w in weights.items()}
    update_chunks = list(encode_chunks(update, delta, "raw", chunk_bytes))
    del weights, delta
    result = asyncio.run(
        run_raw_processes(BROKER, n, update_chunks, model_chunks, rounds, "quorum")
    )
    return result.seconds_per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, nargs="*", default=[25_000_000, 125_000_000])
    parser.add_argument("--participants", type=int, nargs="*", default=[4, 8])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (>= 2)")
    parser.add_argument("--chunk-mb", type=float, default=4)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: a round's time is between two commits")
    chunk = int(args.chunk_mb * 2**20)
    rows = []
    for p in args.params:
        for n in args.participants:
            row = run(p, n, args.rounds, chunk)
            floor = raw_floor(p, n, args.rounds, chunk)
            row["raw_seconds_per_round"] = round(floor, 2)
            row["ratio"] = round(float(row["seconds_per_round"]) / floor, 2)
            rows.append(row)
    head = list(rows[0])
    print(" | ".join(head))
    for row in rows:
        print(" | ".join(str(row[k]) for k in head))
    print(strict_json.dumps({"bench": "large_model", "runs": rows}))


if __name__ == "__main__":
    main()
