"""Codec throughput next to memcpy of the same bytes, measured in one run.

    python bench/codec.py

For 4 MB and 40 MB float32 updates: encode (metadata + tensors -> one msgpack body) and
decode (body -> validated metadata + zero-copy tensor views), as GB/s of tensor payload
and as a ratio to memcpy of the same bytes into a warm buffer (best of N runs each).
Codecs ``raw/chunks`` and ``fp16/chunks`` are the 40 MB update as fedq sends it: chunks of
the default chunk size (``encode_chunks``, each body made and dropped in turn, digests
included; decode of every chunk). For context it also times naive ``msgpack.packb`` /
``unpackb`` of the payload as bytes. Ends with one JSON line of the figures.

    python bench/codec.py --against REV

also times the chunked encoder (``encode_chunks``) of commit REV (its
``messages/chunks.py``, run against this checkout's codec) and this one's on the same 40 MB
update, taking turns, for raw, fp16, int8 and topk:0.01: the ratio of each pair's best
times, this checkout's over REV's.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np

from fedq import strict_json
from fedq.messages import chunks
from fedq.messages.chunks import DEFAULT_CHUNK_BYTES, encode_chunks
from fedq.messages.codec import decode_message, encode_message
from fedq.messages.schema import UpdateMeta
from fedq.runtime.tuning import tune_process


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--tensors", type=int, default=8, help="tensors per update")
    parser.add_argument("--against", metavar="REV", help="also time REV's chunked encoder")
    parser.add_argument("--pairs", type=int, default=3, help="turns each, with --against")
    args = parser.parse_args()
    tuned = tune_process()  # as the fedq CLI does at start
    print(f"glibc malloc tuning: {'on' if tuned else 'off'} (FEDQ_MALLOC_TUNING=0 turns it off)")
    meta = UpdateMeta(
        federation="bench",
        participant="p0",
        round=1,
        base_version=0,
        num_examples=100,
        metrics={"loss": 0.5},
    )
    rng = np.random.default_rng(0)
    header = (
        f"{'size':>6} {'codec':>10} {'memcpy GB/s':>8} {'encode GB/s':>12} {'ratio':>6} "
        f"{'decode GB/s':>12} {'ratio':>7} {'packb ratio':>12} {'unpackb ratio':>14}"
    )
    print(header)
    rows: list[dict[str, object]] = []
    for megabytes in (4, 40):
        for row in measure(meta, megabytes, args.tensors, args.repeat, rng):
            rows.append(row)
            print(
                f"{megabytes:>4}MB {row['codec']:>10} {row['memcpy_gbs']:>8.2f} "
                f"{row['encode_gbs']:>12.2f} {row['encode_ratio']:>6.2f} "
                f"{row['decode_gbs']:>12.1f} {row['decode_ratio']:>7.1f} "
                f"{row['packb_ratio']:>12.2f} {row['unpackb_ratio']:>14.2f}"
            )
    figures: dict[str, object] = {"bench": "codec", "malloc_tuning": tuned, "rows": rows}
    if args.against:
        figures["against"] = args.against
        figures["chunked_encode_vs_against"] = against(
            meta, args.against, args.tensors, args.repeat, args.pairs
        )
    print(strict_json.dumps(figures))


def chunks_at(rev: str) -> types.ModuleType:
    """Commit ``rev``'s ``messages/chunks.py`` as a module of its own (importing this
    checkout's codec)."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{rev}:messages/chunks.py"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"chunks_at_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:messages/chunks.py", "exec"), module.__dict__)
    return module


def encode_seconds(
    module: types.ModuleType,
    meta: UpdateMeta,
    tensors: dict[str, np.ndarray],
    codec: str,
    repeat: int,
) -> float:
    def encode() -> None:
        for _ in module.encode_chunks(meta, tensors, codec):
            pass

    return best_seconds(encode, repeat)


def against(
    meta: UpdateMeta, rev: str, n_tensors: int, repeat: int, pairs: int
) -> dict[str, list[float]]:
    """Per codec, this checkout's best encode time of a 40 MB update as chunks over REV's,
    each of ``pairs`` turns."""
    other = chunks_at(rev)
    tensors = update_tensors(40, n_tensors, np.random.default_rng(1))
    print(f"\n40 MB as chunks, this checkout's encode time / {rev}'s, {pairs} turns each:")
    ratios: dict[str, list[float]] = {}
    for codec in ("raw", "fp16", "int8", "topk:0.01"):
        for _ in range(pairs):
            times = [
                encode_seconds(module, meta, tensors, codec, repeat) for module in (other, chunks)
            ]
            ratios.setdefault(codec, []).append(round(times[1] / times[0], 2))
        print(f"  {codec:>10}: {', '.join(f'{r:.2f}x' for r in ratios[codec])}")
    return ratios


def update_tensors(
    megabytes: int, n_tensors: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """An update of ``megabytes`` of float32 values in ``n_tensors`` tensors."""
    sizes = np.array_split(np.arange(megabytes * 1_000_000 // 4), n_tensors)
    return {f"t{i}": rng.standard_normal(len(s)).astype(np.float32) for i, s in enumerate(sizes)}


def measure(
    meta: UpdateMeta, megabytes: int, n_tensors: int, repeat: int, rng: np.random.Generator
) -> list[dict[str, object]]:
    tensors = update_tensors(megabytes, n_tensors, rng)
    payload = b"".join(t.tobytes() for t in tensors.values())
    target = bytearray(len(payload))
    dst = (ctypes.c_char * len(target)).from_buffer(target)
    gb = len(payload) / 1e9
    memcpy = best_seconds(lambda: ctypes.memmove(dst, payload, len(payload)), repeat)
    packb = best_seconds(lambda: msgpack.packb(payload), repeat)
    packed = msgpack.packb(payload)
    unpackb = best_seconds(lambda: msgpack.unpackb(packed), repeat)
    rows = []
    codecs = (
        ("raw", "fp16", "raw/chunks", "fp16/chunks")
        if megabytes * 1_000_000 > DEFAULT_CHUNK_BYTES
        else ("raw", "fp16")
    )
    for codec in codecs:
        tensor_codec, _, chunked = codec.partition("/")
        bodies = (
            list(encode_chunks(meta, tensors, tensor_codec))
            if chunked
            else [encode_message(meta, tensors, codec)]
        )

        def encode(c: str = tensor_codec, chunked: bool = bool(chunked)) -> None:
            if chunked:
                for _ in encode_chunks(meta, tensors, c):
                    pass
            else:
                encode_message(meta, tensors, c)

        def decode(bodies: list[bytes] = bodies) -> None:
            for b in bodies:
                decoded = decode_message(b)
                decoded.meta(UpdateMeta)
                decoded.weights()

        enc, dec = best_seconds(encode, repeat), best_seconds(decode, repeat)
        rows.append(
            {
                "megabytes": megabytes,
                "codec": codec,
                "memcpy_gbs": round(gb / memcpy, 2),
                "encode_gbs": round(gb / enc, 2),
                "encode_ratio": round(memcpy / enc, 2),
                "decode_gbs": round(gb / dec, 1),
                "decode_ratio": round(memcpy / dec, 1),
                "packb_ratio": round(memcpy / packb, 2),
                "unpackb_ratio": round(memcpy / unpackb, 2),
            }
        )
    return rows


if __name__ == "__main__":
    main()
