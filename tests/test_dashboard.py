"""`fedq dashboard` in a real browser (Debian's Chromium), over a real federation on the real
RabbitMQ: what the page shows, and that it stays up and recovers when the broker or the
management API goes away. The shared broker is never stopped: a TCP relay in front of it
stands in for "the broker" where it has to go away.

Screenshots go to each test's tmp_path; set FEDQ_ARTIFACTS=1 to keep copies in
tests/artifacts/ (dashboard.png: the page over a running federation).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yarl
from playwright.async_api import Browser, Page, async_playwright, expect

from fedq.apps.synthetic import SyntheticApp
from fedq.coordinator.config import CoordinatorConfig
from fedq.coordinator.ledger import UpdateLedger
from fedq.coordinator.ledger_view import read_only
from fedq.coordinator.records import UpdateRecord, VersionRecord
from fedq.dashboard.app import serve
from fedq.messages.amqp import AmqpTransport
from fedq.messages.codec import Weights, encode_message
from fedq.messages.schema import MESSAGE_TYPES, Heartbeat, ParticipantState
from fedq.messages.topology import UPDATE_KEY, Topology, participant_key
from fedq.participant.config import ParticipantConfig
from fedq.scenario import ParticipantProfile
from fedq.simulation import SimulationPlan, simulate
from tests.conftest import BROKER_URL
from tests.helpers import BrokerRelay, free_port, start_fedq, until_async

MANAGEMENT_URL = os.environ.get("FEDQ_TEST_MANAGEMENT_URL", "http://127.0.0.1:15672")
CHROMIUM = os.environ.get("FEDQ_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HAVE_CHROMIUM = Path(CHROMIUM).exists()
ARTIFACTS = Path(__file__).parent / "artifacts"
ROUNDS = 10

pytestmark = pytest.mark.broker


class LearningSynthetic(SyntheticApp):
    """The synthetic app with a made-up evaluation, so the plots have curves: its weights
    grow by about 0.002 a version, and the 'loss' falls and the 'accuracy' rises with
    their mean."""

    def evaluate(self, weights: Weights) -> dict[str, float]:
        mean = float(np.mean(np.concatenate([w.ravel() for w in weights.values()])))
        learned = 1 - math.exp(-300 * max(mean, 0.0))
        return {"loss": 0.15 + 2.2 * (1 - learned), "accuracy": 0.1 + 0.85 * learned}


# ------------------------------------------------------------------ helpers
@dataclass
class RunningDashboard:
    url: str
    http: httpx.AsyncClient

    async def state(self) -> dict[str, Any]:
        response = await self.http.get("api/state")
        assert response.status_code == 200
        return dict(response.json())

    async def status(self, source: str) -> dict[str, Any]:
        return dict((await self.state())["status"][source])

    async def until_status(self, source: str, ok: bool, within: float = 20.0) -> str:
        """Wait until ``source`` is up (or down); its message then."""

        async def reached() -> bool:
            return (await self.status(source))["ok"] is ok

        await until_async(
            reached, what=f"{source} {'up' if ok else 'down'} on the page", within=within
        )
        return str((await self.status(source))["message"])


@contextlib.asynccontextmanager
async def dashboard(
    state_dir: Path, broker_url: str = BROKER_URL, management_url: str = MANAGEMENT_URL
) -> AsyncIterator[RunningDashboard]:
    """``serve`` in this loop on a free port; cancelled at the end, which must stop it."""
    port = free_port()
    serving = asyncio.create_task(serve(state_dir, broker_url, management_url, port=port))
    url = f"http://127.0.0.1:{port}/"
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:

        async def healthy() -> bool:
            assert not serving.done(), serving.exception()
            with contextlib.suppress(httpx.TransportError):
                return (await http.get("healthz")).status_code == 200
            return False

        await until_async(healthy, what="the dashboard answers /healthz", within=10)
        try:
            yield RunningDashboard(url, http)
        finally:
            serving.cancel()
            done, _ = await asyncio.wait({serving}, timeout=10)
            assert serving in done, "serve() still running 10 s after it was cancelled"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert HAVE_CHROMIUM, f"no Chromium at {CHROMIUM}: run `bash scripts/setup.sh --dev`"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class OpenPage:
    page: Page
    #: Uncaught errors of the page's script.
    errors: list[str]

    async def screenshot(self, path: Path) -> None:
        await self.page.screenshot(path=path, full_page=True)
        if os.environ.get("FEDQ_ARTIFACTS"):
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(path, ARTIFACTS / path.name)


async def open_page(browser: Browser, url: str) -> OpenPage:
    page = await browser.new_page(viewport={"width": 1360, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(url)
    return OpenPage(page, errors)


async def version_on_page(page: Page, federation: str, above: int) -> int:
    """The model version the federation's card shows, once it is above ``above``."""
    selector = f"#fed-{federation} .version"
    await page.wait_for_function(
        "([sel, above]) => { const el = document.querySelector(sel);"
        " return el && parseInt(el.textContent.slice(1)) > above; }",
        arg=[selector, above],
        timeout=30_000,
    )
    return int((await page.locator(selector).inner_text()).removeprefix("v"))


def federation_plan(federation: str, state: Path) -> SimulationPlan:
    """Quorum 2 of 3 with late updates folded, and DP on: p2 is a straggler, so the page
    has staleness, privacy spent, and rounds slow enough to watch."""
    return SimulationPlan(
        coordinator=CoordinatorConfig(
            federation=federation,
            participants=3,
            rounds=ROUNDS,
            quorum=2,
            late_updates="fold",
            dp_clip=0.1,
            dp_noise_multiplier=0.3,
            state_dir=state,
        ),
        participant=ParticipantConfig(
            federation=federation, participant_id="p", heartbeat_seconds=1.0
        ),
        broker_url=BROKER_URL,
        profiles=(
            ParticipantProfile(0, delay_seconds=1.0),
            ParticipantProfile(1, delay_seconds=1.0),
            ParticipantProfile(2, delay_seconds=2.5),
        ),
    )


# -------------------------------------------------------------------- tests
async def test_the_page_follows_a_federation_its_queues_and_its_dlq_live(
    tmp_path, federation, browser
):
    state = tmp_path / "state"
    topology = Topology(federation)
    async with AmqpTransport(BROKER_URL) as transport:
        await topology.declare_core(transport)
        await transport.publish(
            topology.updates,
            UPDATE_KEY,
            b"\xc1garbage",
            message_id="garbage",
            type=MESSAGE_TYPES["update"],
            mandatory=True,
        )
    async with dashboard(state) as dash:
        run = asyncio.create_task(
            simulate(federation_plan(federation, state / federation), LearningSynthetic(1000))
        )
        opened = await open_page(browser, dash.url)
        page = opened.page
        card = page.locator(f"#fed-{federation}")

        first = await version_on_page(page, federation, above=0)
        second = await version_on_page(page, federation, above=first)
        assert second > first

        await expect(card.locator(".kpi").first).to_contain_text("quorum")
        await expect(card.locator(".quorum")).to_contain_text("of 2")
        await expect(card.locator(".epsilon")).to_contain_text("ε")
        for participant in ("p0", "p1", "p2"):
            row = card.locator(f'tr[data-participant="{participant}"]')
            await expect(row).to_contain_text(" ago")
        await expect(page.locator("#queues-table")).to_contain_text(f"fedq.{federation}.updates")
        await expect(page.locator("#dlq-table")).to_contain_text("undecodable")
        # Both plots are drawn, each with a line of loss and one of accuracy.
        for plot in ("by-version", "by-time"):
            await expect(card.locator(f".{plot} svg path")).to_have_count(2)
        for source in ("Broker", "Management API", "Ledgers"):
            await expect(page.locator(f'.status.ok[data-source="{source}"]')).to_be_visible()

        shown = await version_on_page(page, federation, above=ROUNDS - 4)
        await expect(card.locator(".by-version svg circle")).to_have_count(2 * shown)
        await opened.screenshot(tmp_path / "dashboard.png")

        result = await asyncio.wait_for(run, 120)
        assert result.rounds_completed == ROUNDS
        await expect(card.locator(".badge.done")).to_be_visible()
        await expect(card.locator(".version")).to_have_text(f"v{ROUNDS}")
        await expect(card.locator(".state.gone")).to_have_count(3)  # each sent its leave
        reasons = (await dash.http.get(f"api/rejections?federation={federation}")).json()
        assert "undecodable" in {r["reason"] for r in reasons["rejections"]}
        assert not opened.errors


async def test_with_the_broker_and_management_api_down_the_page_says_what_to_do(tmp_path, browser):
    nowhere = str(yarl.URL(BROKER_URL).with_host("127.0.0.1").with_port(free_port()))
    async with dashboard(tmp_path, nowhere, f"http://127.0.0.1:{free_port()}") as dash:
        broker = await dash.until_status("broker", ok=False)
        management = await dash.until_status("management", ok=False)
        assert "rabbitmq-server -detached" in broker
        assert "rabbitmq-plugins enable rabbitmq_management" in management
        opened = await open_page(browser, dash.url)
        page = opened.page
        await expect(page.locator('.status.down[data-source="Broker"]')).to_contain_text(
            "cannot reach RabbitMQ"
        )
        await expect(page.locator('.status.down[data-source="Management API"]')).to_contain_text(
            "rabbitmq-plugins enable rabbitmq_management"
        )
        await expect(page.locator("#federations")).to_contain_text("No federation yet")
        await opened.screenshot(tmp_path / "dashboard-all-down.png")
        assert not opened.errors


async def test_a_dashboard_killed_leaves_no_queue_behind(tmp_path):
    """Its queue is exclusive to its connection: RabbitMQ deletes it as the connection
    goes, kill -9 included, where a delete of the dashboard's own on the way out could not
    run (and, given up after a timeout, once left one behind for the tests' broker check).
    Its queue used to expire 30 s after the dashboard was gone."""
    port = free_port()
    process = start_fedq(
        "dashboard", "--state-dir", str(tmp_path), "--port", str(port), log=tmp_path / "dash.log"
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/", timeout=5) as http:
            page = RunningDashboard(f"http://127.0.0.1:{port}/", http)

            async def listening() -> str:
                with contextlib.suppress(httpx.TransportError):
                    status = await page.status("broker")
                    return str(status["message"]) if status["ok"] else ""
                return ""

            message = await until_async(listening, what="the dashboard listening", within=30)
        name = message.rsplit(" on queue ", 1)[1]
        async with httpx.AsyncClient(base_url=MANAGEMENT_URL, auth=("guest", "guest")) as http:
            queue = (await http.get(f"/api/queues/%2F/{name}")).json()
        assert queue["exclusive"] is True, queue
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    async def gone() -> bool:
        async with httpx.AsyncClient(base_url=MANAGEMENT_URL, auth=("guest", "guest")) as http:
            return (await http.get(f"/api/queues/%2F/{name}")).status_code == 404

    await until_async(gone, what=f"{name} deleted with its connection", within=10)


async def beat(federation: str, participant: str, state: ParticipantState) -> None:
    """A participant's heartbeat on the federation's control exchange, as it sends them."""
    heartbeat = Heartbeat(federation=federation, participant=participant, state=state)
    async with AmqpTransport(BROKER_URL) as transport:
        await transport.publish(
            Topology(federation).control,
            participant_key("heartbeat", participant),
            encode_message(heartbeat),
            type=MESSAGE_TYPES["heartbeat"],
        )


async def test_the_dashboard_stays_up_while_the_broker_is_gone_and_recovers(
    tmp_path, federation, browser
):
    UpdateLedger(tmp_path / federation / "ledger.sqlite").close()  # a coordinator's state dir
    async with AmqpTransport(BROKER_URL) as transport:
        await transport.declare_exchange(Topology(federation).control, "topic")
    relay = BrokerRelay(yarl.URL(BROKER_URL))
    await relay.start()
    try:
        async with dashboard(tmp_path, relay.url) as dash:

            async def participant_state(expected: str) -> bool:
                cards = (await dash.state())["federations"]
                card = next(f for f in cards if f["name"] == federation)
                return any(p["state"] == expected for p in card["participants"])

            await dash.until_status("broker", ok=True)
            await beat(federation, "p-watched", "training")
            await until_async(
                lambda: participant_state("training"), what="the heartbeat on the page"
            )

            await relay.stop()
            message = await dash.until_status("broker", ok=False)
            assert "RabbitMQ" in message and "retrying" in message
            opened = await open_page(browser, dash.url)
            page = opened.page
            await expect(page.locator('.status.down[data-source="Broker"]')).to_contain_text(
                "retrying every"
            )
            await expect(page.locator(f"#fed-{federation}")).to_be_visible()
            await opened.screenshot(tmp_path / "dashboard-broker-down.png")

            await relay.start()
            await dash.until_status("broker", ok=True, within=30)
            await beat(federation, "p-watched", "sending")
            await until_async(
                lambda: participant_state("sending"), what="a heartbeat after the outage"
            )
            await expect(page.locator('.status.ok[data-source="Broker"]')).to_be_visible()
            assert not opened.errors
    finally:
        await relay.stop()
        async with AmqpTransport(BROKER_URL) as transport:
            await transport.delete_exchange(Topology(federation).control)


async def test_the_dashboard_stays_up_while_the_management_api_is_gone_and_recovers(
    tmp_path, browser
):
    """The management API behind a relay the test stops and starts (not the shared
    broker's plugin disabled, which every other test running beside it would see)."""
    relay = BrokerRelay(yarl.URL(MANAGEMENT_URL))
    await relay.start()
    try:
        async with dashboard(tmp_path, management_url=relay.url) as dash:
            await dash.until_status("management", ok=True)
            await relay.stop()
            message = await dash.until_status("management", ok=False)
            assert "rabbitmq-plugins enable rabbitmq_management" in message
            opened = await open_page(browser, dash.url)
            await expect(
                opened.page.locator('.status.down[data-source="Management API"]')
            ).to_contain_text("rabbitmq-plugins enable rabbitmq_management")
            await opened.screenshot(tmp_path / "dashboard-management-down.png")
            assert (await dash.status("broker"))["ok"] is True  # AMQP does not need it
            await relay.start()
            await dash.until_status("management", ok=True, within=60)
            await expect(
                opened.page.locator('.status.ok[data-source="Management API"]')
            ).to_be_visible()
            assert not opened.errors
    finally:
        await relay.stop()


async def test_the_dlq_is_browsed_page_by_page_and_by_reason_from_the_ledger(
    tmp_path, federation, browser
):
    ledger = UpdateLedger(tmp_path / federation / "ledger.sqlite")
    ledger.set_meta("federation", federation)
    for i in range(30):
        reason = "stale" if i % 3 else "norm_exceeded"
        ledger.record_rejection(f"u{i}", f"p{i % 4}", 1, 0, 1, reason, f"update number {i}")
    ledger.close()
    async with dashboard(tmp_path) as dash:
        opened = await open_page(browser, dash.url)
        rows = opened.page.locator("#dlq-table tbody tr")
        await expect(rows).to_have_count(25)
        await expect(rows.first).to_contain_text("update number 29")  # newest first
        await opened.page.click("#dlq-older")
        await expect(rows).to_have_count(5)
        await expect(rows.last).to_contain_text("update number 0")
        await opened.page.select_option("#dlq-reason", "norm_exceeded")
        await expect(rows).to_have_count(10)
        await expect(opened.page.locator("#dlq-table")).not_to_contain_text("stale")
        assert not opened.errors


async def test_a_participant_left_behind_is_named_and_every_share_shown(
    tmp_path, federation, browser
):
    """p1's updates keep being refused as stale after its last folded one (the coordinator
    warns and sends it the newest model): the card says so above the participants, whose
    share of the folded updates is a column; one refusal in a row is no warning yet."""
    ledger = UpdateLedger(tmp_path / federation / "ledger.sqlite")
    ledger.set_meta("federation", federation)
    for v, contributors in ((1, ["p0", "p1", "p2"]), (2, ["p0", "p2"]), (3, ["p0"])):
        checkpoint = tmp_path / f"model-v{v}.npz"
        checkpoint.write_bytes(b"a checkpoint")
        ledger.commit_version(
            VersionRecord(v, v, "quorum", 1.0, 0.0, 1.0, str(checkpoint), {}),
            [UpdateRecord(f"u{v}{p}", p, v, v - 1, 1, 1.0) for p in contributors],
        )
    for uid, who, during in (("s1", "p1", 1), ("s2", "p1", 2), ("s3", "p2", 2)):
        ledger.record_rejection(uid, who, 1, 0, during, "stale", "too far behind")
    ledger.close()
    async with dashboard(tmp_path) as dash:
        opened = await open_page(browser, dash.url)
        card = opened.page.locator(f"#fed-{federation}")
        note = card.locator(".note.behind")
        await expect(note).to_contain_text(
            "Left behind: p1 (2 updates refused as stale since its last folded one)"
        )
        await expect(note).not_to_contain_text("p2")
        shares = {"p0": "50%", "p1": "17%", "p2": "33%"}  # of 6 folded updates
        for participant, share in shares.items():
            row = card.locator(f'tr[data-participant="{participant}"] .share')
            await expect(row).to_have_text(share)
        await opened.screenshot(tmp_path / "left-behind.png")
        assert not opened.errors


async def test_the_picker_lists_the_newest_first_and_shows_the_one_picked(
    tmp_path, federation, browser
):
    """Two finished federations under one state dir: the picker lists the one active last
    first and shows it alone; picking the other shows its card, its queues and its DLQ;
    its address (#fed=NAME) opens it again."""
    older, newer = f"{federation}-a", f"{federation}-b"
    for name in (older, newer):  # one after the other: newer is active last
        plan = SimulationPlan(
            coordinator=CoordinatorConfig(
                federation=name, participants=2, rounds=2, state_dir=tmp_path / name,
                linger_seconds=0,
            ),
            participant=ParticipantConfig(federation=name, participant_id="p"),
        )  # fmt: skip
        await asyncio.wait_for(simulate(plan, LearningSynthetic(10)), 60)
    ledger = UpdateLedger(tmp_path / older / "ledger.sqlite")
    ledger.record_rejection("u9", "p1", 1, 0, 1, "norm_exceeded", "a refusal of the older")
    ledger.close()
    async with dashboard(tmp_path) as dash:
        opened = await open_page(browser, dash.url)
        page = opened.page
        # Others' federations on the shared broker, with no ledger here, come after.
        options = page.locator("#fed-pick option")
        await expect(options.nth(0)).to_have_text(f"{newer} (done)")
        await expect(options.nth(1)).to_have_text(f"{older} (done)")
        await expect(page.locator(f"#fed-{newer}")).to_be_visible()
        await expect(page.locator(f"#fed-{older}")).to_have_count(0)
        await page.select_option("#fed-pick", older)
        await expect(page.locator(f"#fed-{older}")).to_be_visible()
        await expect(page.locator(f"#fed-{newer}")).to_have_count(0)
        await expect(page.locator("#dlq-table")).to_contain_text("norm_exceeded")
        # Not seen live, so what each trained on last is not known: a dash, never "vnull".
        await expect(page.locator(f"#fed-{older} table.participants")).not_to_contain_text("null")
        assert page.url.endswith(f"#fed={older}")
        again = await open_page(browser, f"{dash.url}#fed={older}")
        await expect(again.page.locator(f"#fed-{older}")).to_be_visible()
        await opened.screenshot(tmp_path / "picker.png")
        assert not opened.errors and not again.errors


def test_the_ledger_is_opened_read_only(tmp_path):
    path = tmp_path / "ledger.sqlite"
    UpdateLedger(path).close()
    with read_only(path) as db, pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("INSERT INTO meta VALUES ('written', 'by the dashboard')")
