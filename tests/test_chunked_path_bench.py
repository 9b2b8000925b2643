"""bench/chunked_path.py, the coordinator's CPU on an update sent as chunks, which
bench/round_overhead.py reports among its CPU parts (that bench's test runs a model too
small for chunks)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from chunked_path import chunked_path_seconds

from fedq.messages.chunks import DEFAULT_CHUNK_BYTES
from fedq.messages.schema import UpdateMeta

META = UpdateMeta(federation="f", participant="p0", round=1, base_version=0, num_examples=10)


def model(values: int) -> dict[str, np.ndarray]:
    return {"w": np.zeros(values, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


def test_an_update_of_several_chunks_is_taken_in_and_folded():
    template = model(DEFAULT_CHUNK_BYTES // 4 * 2)  # two chunks and a bit
    delta = {name: np.full_like(t, 0.5) for name, t in template.items()}
    path = chunked_path_seconds(template, delta, META, repeat=2)
    assert path is not None and path.intake > 0 and path.fold > 0


def test_an_update_in_one_message_has_no_chunked_path():
    template = model(1000)
    assert chunked_path_seconds(template, template, META, repeat=1) is None
