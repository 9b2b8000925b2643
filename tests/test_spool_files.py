"""Spool files reused (:mod:`fedq.coordinator.spool_files`): a file is written over only
once no name of it is read, never more than the bound wait, and the assembler reads back
what it wrote even from a file that held a longer update before."""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from fedq.coordinator.assembly import Assembled
from fedq.coordinator.intake import Intake
from fedq.coordinator.spool_files import SpoolFiles
from fedq.coordinator.verdicts import ChunkCandidate
from fedq.messages.chunks import encode_chunks
from fedq.messages.codec import spec_of
from fedq.messages.schema import UpdateMeta
from fedq.messages.transport import Delivery
from tests.helpers import AdmitFresh, BodyOnly, roomy_assembler

pytestmark = pytest.mark.pure


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_retired_file_is_the_next_one_taken(tmp_path: Path):
    files = SpoolFiles(tmp_path, most=4)
    first = written(tmp_path / "a.chunks", b"x" * 100)
    inode = first.stat().st_ino
    files.retire(first)
    assert not first.exists() and files.free == 1
    files.take(tmp_path / "b.chunks")
    assert (tmp_path / "b.chunks").stat().st_ino == inode, "a new file, not the retired one"
    assert files.free == 0
    files.take(tmp_path / "c.chunks")  # none left: a new, empty file
    assert (tmp_path / "c.chunks").read_bytes() == b""


def test_a_file_still_read_under_a_second_name_is_not_reused(tmp_path: Path):
    files = SpoolFiles(tmp_path, most=4)
    spool = written(tmp_path / "a.chunks", b"the update")
    kept = tmp_path / "a.chunks.kept-0"
    os.link(spool, kept)
    files.retire(spool)  # the stream closes; the aggregation still reads `kept`
    assert files.free == 0 and not spool.exists()
    files.take(tmp_path / "b.chunks")
    (tmp_path / "b.chunks").write_bytes(b"another update")
    assert kept.read_bytes() == b"the update"
    files.retire(kept)  # its last name: now it may be reused
    assert files.free == 1 and not kept.exists()
    files.retire(kept)  # already gone
    assert files.free == 1


def test_a_new_file_leaves_what_an_older_name_shared_alone(tmp_path: Path):
    files = SpoolFiles(tmp_path, most=4)
    spool = written(tmp_path / "a.chunks", b"the update")
    os.link(spool, tmp_path / "a.chunks.kept-0")
    files.take(spool)  # the same name again, nothing free
    assert spool.read_bytes() == b""
    assert (tmp_path / "a.chunks.kept-0").read_bytes() == b"the update"


def test_no_more_than_the_bound_wait_for_reuse(tmp_path: Path):
    files = SpoolFiles(tmp_path, most=2)
    for name in "abc":
        files.retire(written(tmp_path / f"{name}.chunks", b"x"))
    assert files.free == 2
    assert len(list(tmp_path.iterdir())) == 2, "the third was removed"


def test_the_assembler_reads_back_what_it_wrote_over_a_longer_file(tmp_path: Path):
    template = {"w": np.zeros(200_000, np.float32)}
    spec = spec_of(template)
    assembler = roomy_assembler(tmp_path / "spool", spec, 256 << 10)
    longer = written(tmp_path / "spool" / "old.chunks", os.urandom(3 << 20))
    inode = longer.stat().st_ino
    assembler.files.retire(longer)
    intake = Intake("f", spec, lambda update_id: None)
    delta = {"w": np.arange(200_000, dtype=np.float32)}
    meta = UpdateMeta(federation="f", participant="p0", round=1, base_version=0, num_examples=3)
    for body in encode_chunks(meta, delta, chunk_bytes=256 << 10):
        verdict = intake.check(body, None, AdmitFresh())
        assert isinstance(verdict, ChunkCandidate), verdict
        outcome = assembler.add(verdict, cast(Delivery, BodyOnly(body)))
    assert isinstance(outcome, Assembled)
    assert outcome.stream.spool.stat().st_ino == inode, "the retired file was not reused"
    assert outcome.stream.spool.stat().st_size == 3 << 20, "written over, not truncated"
    read = np.zeros(200_000, np.float32)
    for name, start, values in assembler.finish(outcome.stream):
        assert name == "w"
        read[start : start + values.size] = values
    np.testing.assert_array_equal(read, delta["w"])
    outcome.stream.close()
    assert assembler.files.free == 1
