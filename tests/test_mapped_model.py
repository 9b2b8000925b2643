"""The coordinator serves the current model from its checkpoint file: the mapping gives the
exact tensors back, and reading through it (publishing the model's chunks, FedAvg's step)
leaves the process holding the pages of a block or a chunk, not of the model. Memory is
measured in a fresh process (its VmHWM), which fails when the pages are not let go."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedq.coordinator.checkpoint import (
    load_checkpoint,
    map_checkpoint,
    save_checkpoint,
    stage_checkpoint,
)

pytestmark = pytest.mark.processes

DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.int8, np.uint8])
TENSORS = st.lists(
    DTYPES.flatmap(lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_side=5))),
    max_size=4,
)


@settings(max_examples=40, deadline=None)
@given(tensors=TENSORS, order=st.randoms())
def test_a_mapped_checkpoint_is_the_saved_model_in_its_order(tmp_path_factory, tensors, order):
    names = [f"t{i}/kernel:0" for i in range(len(tensors))]
    order.shuffle(names)
    weights = dict(zip(names, tensors, strict=True))
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt"), 1, weights, {"m": np.ones(2)})
    mapped = map_checkpoint(path)
    assert list(mapped) == names
    for name, tensor in weights.items():
        assert mapped[name].dtype == tensor.dtype and mapped[name].shape == tensor.shape
        np.testing.assert_array_equal(mapped[name], tensor)
        assert not mapped[name].flags.writeable


def test_a_checkpoint_saved_compressed_is_loaded_instead(tmp_path):
    weights = {"w": np.arange(6, dtype=np.float32)}
    path = tmp_path / "model-v000001.npz"
    np.savez_compressed(path, arr_0=weights["w"], __names__=np.array(["w"]))
    np.testing.assert_array_equal(map_checkpoint(path)["w"], load_checkpoint(path)["w"])


#: Run in a fresh process: the model's megabytes mapped, read through as the coordinator
#: does, and the peak resident memory (VmHWM) above the baseline after the setup.
READ_THROUGH = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from fedq.coordinator.checkpoint import map_checkpoint, release_pages, stage_checkpoint
    from fedq.coordinator.strategies.fedavg import FedAvg
    from fedq.messages.chunks import encode_chunks
    from fedq.messages.schema import ModelMeta
    from fedq.runtime.peak_memory import vm_hwm_kib

    def hwm():
        return vm_hwm_kib() / 1024

    path, what = sys.argv[1], sys.argv[2]
    model = map_checkpoint(Path(path))
    if what == "stage":  # the model in RAM, as the aggregate the coordinator stages is
        model = {n: np.array(w) for n, w in model.items()}
        open("/proc/self/clear_refs", "w").write("5")  # the peak from here: not the mapping's
    meta = ModelMeta(federation="f", version=1, rounds_total=1)
    if what == "step":
        delta = {n: np.full(w.shape, 0.5, np.float32) for n, w in model.items()}
    before = hwm()
    if what == "stage":
        stage_checkpoint(Path(path).parent / "staged", model)
    elif what == "publish":
        release = lambda: release_pages(model.values())
        for body in encode_chunks(meta, model, chunk_bytes=4 << 20, read=release):
            del body
    else:
        new = FedAvg().step(model, delta)
        assert new["small"].tolist() == [1.5] * 10 and new["big"][:3].tolist() == [0.5, 1.5, 2.5]
    print(json.dumps({"grew_mib": hwm() - before}))
    """
)


def _grew_mib(path: Path, what: str) -> float:
    run = subprocess.run(
        [sys.executable, "-c", READ_THROUGH, str(path), what],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(run.stdout.splitlines()[-1])["grew_mib"])


def test_publishing_and_stepping_a_mapped_model_hold_a_chunk_of_it_not_all(tmp_path):
    weights = {"big": np.arange(50_000_000, dtype=np.float32), "small": np.ones(10, np.float32)}
    path = save_checkpoint(tmp_path, 1, weights)  # 200 MB
    del weights
    # Held at once: a few 4 MiB chunks or blocks, and their bodies; the model is 191 MiB.
    grew = {what: _grew_mib(path, what) for what in ("publish", "step")}
    assert grew["publish"] < 48 and grew["step"] < 48, grew


def test_staging_a_checkpoint_copies_nothing_of_the_model(tmp_path):
    """``np.savez`` writes each tensor in 16 MiB copies, which were the coordinator's peak."""
    weights = {"big": np.arange(50_000_000, dtype=np.float32), "small": np.ones(10, np.float32)}
    path = save_checkpoint(tmp_path, 1, weights)  # 200 MB
    del weights
    assert _grew_mib(path, "stage") < 4


@settings(max_examples=40, deadline=None)
@given(tensors=TENSORS)
def test_a_checkpoint_holds_what_np_savez_writes(tmp_path_factory, tensors):
    weights = {f"t{i}": tensor for i, tensor in enumerate(tensors)}
    state = {"m": np.ones(3)}
    path = stage_checkpoint(tmp_path_factory.mktemp("ckpt"), weights, state)
    arrays = {f"arr_{i}": tensor for i, tensor in enumerate(tensors)} | {"state_0": state["m"]}
    arrays |= {"__names__": np.array(list(weights), dtype=str), "__state_names__": np.array(["m"])}
    expected = io.BytesIO()
    np.savez(expected, **arrays)
    with zipfile.ZipFile(path) as ours, zipfile.ZipFile(expected) as numpys:
        assert [i.filename for i in ours.infolist()] == [i.filename for i in numpys.infolist()]
        for member in numpys.infolist():
            assert ours.getinfo(member.filename).compress_type == zipfile.ZIP_STORED
            assert ours.read(member.filename) == numpys.read(member.filename), member.filename
