"""What a sender wrote, on the dashboard: the ledger's rejections hold a message id, a
participant and a detail that may be any printable text, HTML included, and the page
renders them from JSON into HTML. In a real browser (Chromium), they show as text: no
element is made of them and no script of theirs runs."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from fedq.coordinator.ledger import UpdateLedger
from tests.test_dashboard import browser, dashboard, open_page

pytestmark = [pytest.mark.processes, pytest.mark.broker]  # the dashboard reads the broker

__all__ = ["browser"]  # the fixture, used by name

INJECTED = '<img src=x onerror="window.owned = 1">'
SCRIPT = "<script>window.owned = 2</script>"


async def test_hostile_text_in_the_ledger_shows_as_text_on_the_dashboard(
    tmp_path, federation, browser
):
    ledger = UpdateLedger(tmp_path / federation / "ledger.sqlite")
    ledger.set_meta("federation", federation)
    ledger.record_rejection(INJECTED, f"p{INJECTED}", 1, 0, 1, "schema", f"[/x]{SCRIPT}\x1b[2J")
    ledger.close()
    async with dashboard(tmp_path) as dash:
        opened = await open_page(browser, dash.url)
        row = opened.page.locator("#dlq-table tbody tr")
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text(INJECTED)
        await expect(row).to_contain_text(f"[/x]{SCRIPT}\\x1b[2J")
        assert await opened.page.locator("#dlq-table img, #dlq-table script").count() == 0
        assert await opened.page.evaluate("window.owned") is None
        assert not opened.errors
