"""The Prometheus endpoint of a coordinator on the real RabbitMQ: scraped over HTTP while a
federation runs and after it, its counts agree with what the coordinator did."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.observers import CoordinatorObserver
from fedq.coordinator.records import VersionSummary
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import Weights
from fedq.messages.schema import MESSAGE_TYPES
from fedq.messages.topology import UPDATE_KEY, Topology
from fedq.metrics import MetricsUnavailable, PrometheusMetrics, serve_metrics
from fedq.participant.app import Partition, TrainConfig, TrainResult
from fedq.participant.config import ParticipantConfig
from fedq.simulation import SimulationPlan, simulate
from tests.conftest import BROKER_URL

pytestmark = pytest.mark.broker


class EvaluatedSyntheticApp(SyntheticApp):
    """The synthetic app with a held-out evaluation, so the loss/accuracy gauges move; p2
    trains on model v1 only once ``scraped`` is set, so version 2 is open at the scrape."""

    def __init__(self, params: int) -> None:
        super().__init__(params=params)
        self.scraped = threading.Event()

    def evaluate(self, weights: Weights) -> dict[str, float]:
        mean = float(np.mean([w.mean() for w in weights.values()]))
        return {"loss": 1.0 - mean, "accuracy": min(1.0, mean * 100)}

    def train(self, weights: Weights, partition: Partition, config: TrainConfig) -> TrainResult:
        on_v1 = any(np.any(w) for w in weights.values())  # v0 is all zeros
        if on_v1:  # in a worker thread: waiting blocks no loop
            assert self.scraped.wait(60), "no scrape within 60 s of the first commit"
        return super().train(weights, partition, config)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of series ``name`` with (at least) ``labels`` in a scrape, None if absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return s.value
    return None


def total(text: str, name: str, **labels: str) -> float:
    """The sum of every series ``name`` with (at least) ``labels``: e.g. over all reasons."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


class ScrapeAtFirstCommit(CoordinatorObserver):
    """Scrapes the endpoint once version 1 is committed, while version 2 is open."""

    def __init__(self, url: str, scraped: threading.Event) -> None:
        self.url = url
        self.scraped = scraped
        self.scrape: asyncio.Task[str] | None = None

    def version_committed(self, row: VersionSummary) -> None:
        if row.version == 1:
            self.scrape = asyncio.get_running_loop().create_task(self._get())

    async def _get(self) -> str:
        async with httpx.AsyncClient() as client:
            response = await client.get(self.url, timeout=10)
            response.raise_for_status()
        self.scraped.set()
        return response.text


async def test_a_scrape_during_and_after_a_federation_counts_what_the_coordinator_did(
    tmp_path: Path, federation: str
):
    """3 participants, 3 rounds and one garbage body queued before the run. No participant
    trains on model v1 before the scrape at the first commit: it lands while the second
    version is open and has folded nothing, however loaded the machine (model v1 goes out
    before its commit is durable, so updates on it may wait in the queue by then)."""
    plan = SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=federation, state_dir=tmp_path, participants=3, rounds=3
        ),
        participant=ParticipantConfig(federation=federation, participant_id="p"),
        broker_url=BROKER_URL,
    )
    topology = Topology(federation)
    metrics = PrometheusMetrics(federation)
    async with AmqpTransport(BROKER_URL) as sender:
        try:
            await topology.declare_core(sender)
            await sender.publish(
                topology.updates, UPDATE_KEY, b"\xc1garbage", message_id="garbage",
                type=MESSAGE_TYPES["update"], mandatory=True,
            )  # fmt: skip
            async with serve_metrics(metrics, port=0) as url, httpx.AsyncClient() as client:
                app = EvaluatedSyntheticApp(params=1000)
                watcher = ScrapeAtFirstCommit(url, app.scraped)
                result = await asyncio.wait_for(simulate(plan, app, [metrics, watcher]), 120)
                assert watcher.scrape is not None
                during = await watcher.scrape
                after = (await client.get(url, timeout=10)).text
        finally:
            await topology.delete(sender, [f"p{i}" for i in range(3)])
    assert result.model_version == 3 and result.updates_incorporated == 9

    on = {"federation": federation}
    assert sample(during, "fedq_model_version", **on) == 1
    assert sample(during, "fedq_updates_accepted_total", **on) == 3
    assert sample(during, "fedq_updates_rejected_total", reason="undecodable", **on) == 1
    assert sample(during, "fedq_version_duration_seconds_count", **on) == 1
    assert sample(during, "fedq_participants_alive", **on) == 3

    accepted = total(after, "fedq_updates_accepted_total", **on)
    rejected = total(after, "fedq_updates_rejected_total", **on)
    duplicates = total(after, "fedq_updates_duplicate_total", **on)
    assert accepted == 9
    assert total(after, "fedq_updates_received_total", **on) == accepted + rejected + duplicates
    assert sample(after, "fedq_updates_rejected_total", reason="undecodable", **on) == 1
    assert sample(after, "fedq_model_version", **on) == 3
    assert sample(after, "fedq_version_duration_seconds_count", **on) == 3
    assert sample(after, "fedq_update_staleness_versions_count", **on) == 9
    assert sample(after, "fedq_commit_phase_seconds_count", phase="checkpoint", **on) == 3
    assert total(after, "fedq_updates_received_bytes_total", **on) > 0
    assert sample(after, "fedq_held_out_loss", **on) == pytest.approx(
        1.0 - 3 * SyntheticApp.fedavg_step([0, 1, 2]), rel=1e-5
    )
    assert sample(after, "fedq_held_out_accuracy_ratio", **on) == pytest.approx(
        min(1.0, 100 * 3 * SyntheticApp.fedavg_step([0, 1, 2])), rel=1e-5
    )
    assert sample(after, "fedq_privacy_epsilon", **on) is None  # DP off: no made-up value


async def test_a_second_server_on_a_taken_port_fails_with_one_line_that_says_what_to_do():
    async with serve_metrics(PrometheusMetrics("a")) as url:
        port = httpx.URL(url).port
        assert port is not None
        with pytest.raises(MetricsUnavailable) as failure:
            async with serve_metrics(PrometheusMetrics("b"), port=port):
                pass
    message = str(failure.value)
    assert "\n" not in message
    assert f"127.0.0.1:{port}" in message and "in use" in message and "choose another" in message


async def test_two_observers_in_one_process_count_apart():
    """Each keeps its own registry: no clash on metric names, no shared counts."""
    first, second = PrometheusMetrics("same"), PrometheusMetrics("same")
    first.version_opened(4, 5)
    async with (
        serve_metrics(first) as one,
        serve_metrics(second) as two,
        httpx.AsyncClient() as client,
    ):
        texts = [(await client.get(url)).text for url in (one, two)]
    assert [sample(t, "fedq_model_version", federation="same") for t in texts] == [4, 0]
