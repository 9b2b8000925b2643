"""Folding a chunked update's chunks as they come (:mod:`fedq.coordinator.strategies.early_mean`):
the mean is the one the whole updates make, whatever is refused, dropped or capped on the
way. Pure: real chunks through the real intake and assembler, spooled to a temporary folder.

The deltas hold small integers, so every sum is exact in float32 and the comparisons are
bit for bit: a fold left in the sums, or one missing, changes the result."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedq.coordinator.assembly import Assembled, ChunkBody, Pending, Stream
from fedq.coordinator.intake import Intake
from fedq.coordinator.strategies import AggregationContext
from fedq.coordinator.strategies.base import WholeDelta
from fedq.coordinator.strategies.early_mean import EarlyStreamingMean, WeightedMean
from fedq.coordinator.verdicts import ChunkCandidate, Rejection
from fedq.messages.chunks import encode_chunks
from fedq.messages.codec import spec_of
from fedq.messages.schema import UpdateMeta
from fedq.messages.transport import Delivery
from tests.helpers import AdmitFresh, BodyOnly, roomy_assembler

pytestmark = pytest.mark.pure

TEMPLATE = {"w": np.zeros(300_000, np.float32), "b": np.zeros(1000, np.float32)}
CHUNK_BYTES = 256 << 10  # 5 chunks an update


@dataclass
class Sent:
    """One update's chunks as the intake passed them, with their bodies."""

    weight: int
    delta: dict[str, np.ndarray]
    chunks: list[tuple[ChunkCandidate, bytes]]

    @property
    def update_id(self) -> str:
        return self.chunks[0][0].meta.update_id


class Federation:
    """The coordinator's side of one version: intake, assembler, an early mean."""

    def __init__(
        self,
        tmp_path: Path,
        share: float = 0.75,
        template: dict[str, np.ndarray] = TEMPLATE,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        spec = spec_of(template)
        self.spec, self.template, self.chunk_bytes = spec, template, chunk_bytes
        self.spool = tmp_path / "spool"
        self.intake = Intake("f", spec, lambda update_id: None)
        self.assembler = roomy_assembler(self.spool, spec, chunk_bytes, max_streams=16)
        context = AggregationContext(template, 8, 0, tmp_path, version=1, max_weight_share=share)
        mean = WeightedMean().start(context)
        early = mean.early_folds()
        assert early is mean
        self.mean: EarlyStreamingMean = mean
        self.rng = np.random.default_rng(5)
        self._ids = itertools.count()

    def update(self, weight: int) -> Sent:
        delta = {
            k: self.rng.integers(-8, 9, v.shape).astype(np.float32)
            for k, v in self.template.items()
        }
        i = next(self._ids)
        meta = UpdateMeta(
            federation="f", participant=f"p{i}", round=1, base_version=0, num_examples=weight
        )
        chunks = []
        for body in encode_chunks(meta, delta, chunk_bytes=self.chunk_bytes):
            verdict = self.intake.check(body, None, AdmitFresh())
            assert isinstance(verdict, ChunkCandidate), verdict
            chunks.append((verdict, body))
        assert len(chunks) > 2
        return Sent(weight, delta, chunks)

    def take(self, candidate: ChunkCandidate, body: bytes) -> Stream | None:
        """One chunk as the collector takes it: spooled, folded if its update began early.
        Returns its stream once complete."""
        outcome = self.assembler.add(candidate, cast(Delivery, BodyOnly(body)))
        assert isinstance(outcome, Pending | Assembled)
        key = outcome.stream.update_id
        if len(outcome.stream.chunks) == 1:
            self.mean.begin(key, float(candidate.meta.num_examples), 1.0)
        self.mean.fold(key, ChunkBody(body, self.spec), candidate.sum_squares)
        return outcome.stream if isinstance(outcome, Assembled) else None

    def admit(self, stream: Stream) -> None:
        """A complete stream checked and admitted, as the version does."""
        pieces = self.assembler.finish(stream)
        weight = float(stream.meta.num_examples)
        assert self.mean.admit(stream.update_id, pieces, weight, 1.0, stream.count)
        stream.close()  # as the collector does once the update is folded


def interleaved(*updates: Sent) -> list[tuple[ChunkCandidate, bytes]]:
    """Their chunks as a round brings them: one of each in turn."""
    rounds = itertools.zip_longest(*(u.chunks for u in updates))
    return [chunk for turn in rounds for chunk in turn if chunk is not None]


def reference(updates: list[Sent], share: float = 1.0) -> dict[str, np.ndarray]:
    """The mean of the same updates, each folded whole from memory. With the cap off by
    default: under the cap, the early mean divides all the sums by the total weight, as
    this one does (a mean keeping the heaviest aside joins it in a second step, which
    rounds its last bit differently)."""
    context = AggregationContext(TEMPLATE, 8, 0, Path("/nonexistent"), 1, share)
    mean = WeightedMean().start(context)
    for sent in updates:
        mean.add(sent.delta, float(sent.weight))
    return mean.result()


def assert_same(result: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    for name in TEMPLATE:
        np.testing.assert_array_equal(result[name], expected[name])


def collect(fed: Federation, chunks: list[tuple[ChunkCandidate, bytes]]) -> list[Stream]:
    """Take every chunk; the streams that completed, in the order they did."""
    return [stream for c, b in chunks if (stream := fed.take(c, b)) is not None]


def test_chunks_folded_as_they_come_make_the_mean_of_the_whole_updates(tmp_path: Path):
    fed = Federation(tmp_path)
    updates = [fed.update(w) for w in (30, 10, 20, 25)]
    for stream in collect(fed, interleaved(*updates)):
        fed.admit(stream)
    assert_same(fed.mean.result(), reference(updates))
    assert fed.mean.folded_again == 0, "nothing was dropped: no pass over the spools again"
    fed.mean.close()
    assert not list((tmp_path / "spool").glob("*.chunks*")), "a kept spool outlived the version"
    assert fed.assembler.files.free == len(updates), "every spool file waits for reuse"


def test_a_refused_stream_is_taken_out_and_no_later_one_begins_early(tmp_path: Path):
    """Chunks of an update whose whole is refused (its digest) were folded: the result is
    the others' mean, bit for bit, and the sums were folded again once."""
    fed = Federation(tmp_path)
    good = [fed.update(w) for w in (10, 20, 30)]
    forged = fed.update(15)
    streams = collect(fed, interleaved(good[0], good[1], forged))
    (bad,) = [s for s in streams if s.update_id == forged.update_id]
    bad.chain.carried[bad.count - 1] = "0" * 32  # no longer the chain of its chunks
    for stream in streams:
        if stream is bad:
            with pytest.raises(Rejection, match="do not hash"):
                fed.assembler.finish(stream)
            fed.mean.drop(stream.update_id)
            stream.close()
        else:
            fed.admit(stream)
    # After a drop, a new update is taken whole at its admission, not chunk by chunk.
    assert not fed.mean.begin("later", 1.0, 1.0)
    (last,) = collect(fed, good[2].chunks)
    fed.admit(last)
    assert_same(fed.mean.result(), reference(good))
    assert fed.mean.folded_again == 1


def test_an_update_still_coming_when_the_version_closes_is_left_out(tmp_path: Path):
    fed = Federation(tmp_path)
    done = [fed.update(w) for w in (10, 20)]
    coming = fed.update(40)
    chunks = interleaved(*done, coming)
    last_of_coming = max(i for i, (c, _) in enumerate(chunks) if c.meta.participant == "p2")
    streams = collect(fed, chunks[:last_of_coming])
    assert [s.update_id for s in streams] == [u.update_id for u in done]
    for stream in streams:
        fed.admit(stream)
    assert_same(fed.mean.result(), reference(done))
    assert fed.mean.folded_again == 1


@pytest.mark.parametrize("in_memory_first", [False, True])
def test_a_chunked_heaviest_over_its_cap_is_joined_with_its_capped_weight(
    tmp_path: Path, in_memory_first: bool
):
    """The heaviest was folded with its own weight as its chunks came; over its cap, it is
    taken out and joined with the capped weight, exactly as a heaviest kept aside. An update
    in memory, lighter, goes to the other sums, and the two are added at the end."""
    fed = Federation(tmp_path)
    chunked = [fed.update(w) for w in (10, 10**6, 20)]
    light = fed.update(5)
    if in_memory_first:
        fed.mean.add_pieces(WholeDelta(light.delta), float(light.weight))
    for stream in collect(fed, interleaved(*chunked)):
        fed.admit(stream)
    if not in_memory_first:
        fed.mean.add_pieces(WholeDelta(light.delta), float(light.weight))
    everyone = [*chunked, light]
    expected = reference(everyone, share=0.75)
    assert_same(fed.mean.result(), expected)
    assert fed.mean.capped_weight == pytest.approx(3 * (10 + 20 + 5))
    assert fed.mean.folded_again == 1


def test_an_update_heavier_than_one_in_memory_leaves_it_folded_with_its_weight(
    tmp_path: Path,
):
    """A heavy update in memory is kept aside; a heavier chunked one folds it into the
    other sums with its own weight and becomes the heaviest."""
    fed = Federation(tmp_path)
    aside = fed.update(100)
    fed.mean.add_pieces(WholeDelta(aside.delta), float(aside.weight))
    chunked = [fed.update(w) for w in (1000, 10)]
    for stream in collect(fed, interleaved(*chunked)):
        fed.admit(stream)
    assert_same(fed.mean.result(), reference([aside, *chunked], share=0.75))
    assert fed.mean.capped_weight == pytest.approx(3 * (100 + 10))


def test_an_update_whose_folds_miss_a_chunk_is_taken_whole(tmp_path: Path):
    """The collector folds every chunk of an update begun early; if one were missed, the
    admission sees fewer folds than chunks and takes the update whole instead."""
    fed = Federation(tmp_path)
    updates = [fed.update(w) for w in (10, 20)]
    skipped = updates[1].chunks[2][0]
    streams = []
    for candidate, body in interleaved(*updates):
        if candidate is skipped:
            outcome = fed.assembler.add(candidate, cast(Delivery, BodyOnly(body)))
            assert isinstance(outcome, Pending)
            continue
        if (stream := fed.take(candidate, body)) is not None:
            streams.append(stream)
    for stream in streams:
        fed.admit(stream)
    assert_same(fed.mean.result(), reference(updates))


SMALL = {"w": np.zeros(60_000, np.float32), "b": np.zeros(100, np.float32)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(
        st.tuples(
            st.integers(1, 400) | st.integers(10_000, 100_000),  # weight: some over the cap
            st.sampled_from(["admitted", "refused", "coming", "in memory"]),
        ),
        min_size=1,
        max_size=6,
    ).filter(lambda plan: any(fate in ("admitted", "in memory") for _, fate in plan)),
    share=st.sampled_from([0.5, 0.75, 1.0]),
    order=st.randoms(use_true_random=False),
)
def test_whatever_is_refused_or_still_coming_the_mean_is_that_of_the_admitted(
    tmp_path_factory: pytest.TempPathFactory,
    plan: list[tuple[int, str]],
    share: float,
    order: Any,
):
    """Updates in chunks, interleaved in any order, some refused when whole, some still
    coming at the end, some in one message: the result is the weighted mean (the heaviest
    capped) of those admitted, as a mean of the whole updates in memory makes it."""
    fed = Federation(tmp_path_factory.mktemp("early"), share, SMALL, chunk_bytes=64 << 10)
    updates = [(fed.update(weight), fate) for weight, fate in plan]
    chunked = [(sent, fate) for sent, fate in updates if fate != "in memory"]
    arrivals = [chunk for sent, _ in chunked for chunk in sent.chunks]
    order.shuffle(arrivals)
    # An update still coming lacks its last chunk to arrive.
    for sent, fate in chunked:
        if fate == "coming":
            arrivals.remove(max(sent.chunks, key=lambda c: arrivals.index(c)))
    in_memory = iter([sent for sent, fate in updates if fate == "in memory"])
    fates = {sent.update_id: fate for sent, fate in chunked}
    for candidate, body in arrivals:
        if order.random() < 0.3 and (whole := next(in_memory, None)) is not None:
            fed.mean.add_pieces(WholeDelta(whole.delta), float(whole.weight))
        stream = fed.take(candidate, body)
        if stream is None:
            continue
        if fates[stream.update_id] == "refused":
            fed.mean.drop(stream.update_id)
            stream.close()
        else:
            fed.admit(stream)
    for whole in in_memory:
        fed.mean.add_pieces(WholeDelta(whole.delta), float(whole.weight))
    admitted = [sent for sent, fate in updates if fate in ("admitted", "in memory")]
    context = AggregationContext(SMALL, 8, 0, Path("/nonexistent"), 1, share)
    expected = WeightedMean().start(context)
    for sent in admitted:
        expected.add(sent.delta, float(sent.weight))
    result, reference_mean = fed.mean.result(), expected.result()
    for name in SMALL:  # the same sums; the last step may round differently (see reference)
        np.testing.assert_allclose(result[name], reference_mean[name], rtol=2e-7, atol=2e-6)
    fed.mean.close()
    assert not list(fed.spool.glob("*.kept-*")), "a kept spool file outlived the version"
