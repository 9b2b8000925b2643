"""Codec throughput next to memcpy of the same bytes, measured in one run.

    python bench/codec.py

For 4 MB and 40 MB float32 updates: encode (metadata + tensors -> one msgpack body) and
decode (body -> validated metadata + zero-copy tensor views), as GB/s of tensor payload
and as a ratio to memcpy of the same bytes into a warm buffer (best of N runs each).
For context it also times naive ``msgpack.packb`` / ``unpackb`` of the payload as bytes.
"""

from __future__ import annotations

import argparse
import ctypes
import time
from collections.abc import Callable

import msgpack
import numpy as np

from fedq.messages.allocator import tune_malloc_for_large_buffers
from fedq.messages.codec import decode_message, encode_message
from fedq.messages.schema import UpdateMeta


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
    args = parser.parse_args()
    tuned = tune_malloc_for_large_buffers()
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
        f"{'size':>6} {'codec':>6} {'memcpy GB/s':>12} {'encode GB/s':>12} {'ratio':>6} "
        f"{'decode GB/s':>12} {'ratio':>7} {'packb ratio':>12} {'unpackb ratio':>14}"
    )
    print(header)
    for megabytes in (4, 40):
        for line in measure(meta, megabytes, args.tensors, args.repeat, rng):
            print(line)


def measure(
    meta: UpdateMeta, megabytes: int, n_tensors: int, repeat: int, rng: np.random.Generator
) -> list[str]:
    params = megabytes * 1_000_000 // 4
    sizes = np.array_split(np.arange(params), n_tensors)
    tensors = {f"t{i}": rng.standard_normal(len(s)).astype(np.float32) for i, s in enumerate(sizes)}
    payload = b"".join(t.tobytes() for t in tensors.values())
    target = bytearray(len(payload))
    dst = (ctypes.c_char * len(target)).from_buffer(target)
    gb = len(payload) / 1e9
    memcpy = best_seconds(lambda: ctypes.memmove(dst, payload, len(payload)), repeat)
    packb = best_seconds(lambda: msgpack.packb(payload), repeat)
    packed = msgpack.packb(payload)
    unpackb = best_seconds(lambda: msgpack.unpackb(packed), repeat)
    lines = []
    for codec in ("raw", "fp16"):
        body = encode_message(meta, tensors, codec)

        def encode(c: str = codec) -> None:
            encode_message(meta, tensors, c)

        def decode(b: bytes = body) -> None:
            decoded = decode_message(b)
            decoded.meta(UpdateMeta)
            decoded.weights()

        enc, dec = best_seconds(encode, repeat), best_seconds(decode, repeat)
        lines.append(
            f"{megabytes:>4}MB {codec:>6} {gb / memcpy:>12.2f} {gb / enc:>12.2f} "
            f"{memcpy / enc:>6.2f} {gb / dec:>12.1f} {memcpy / dec:>7.1f} "
            f"{memcpy / packb:>12.2f} {memcpy / unpackb:>14.2f}"
        )
    return lines


if __name__ == "__main__":
    main()
