"""The dashboard in a real headless Chromium: it refreshes itself in place (no page reload) while a
task runs to SUCCESS, a full-page screenshot of it is a real render, its row links to the task's own
page (screenshotted too), and with API keys on a browser signs in through the form (session cookie)
and out again.

Needs Debian's chromium at /usr/bin/chromium and the `playwright` package (the test extra); it
skips cleanly without them. Playwright's own browser download is never used.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.api.conftest import api_only
from tests.system import ROOT, STAGE_SERVICES, System

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = ROOT / "test-output" / "dashboard.png"
TASK_SCREENSHOT = ROOT / "test-output" / "task.png"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


def test_dashboard_follows_a_task_without_reloading(system: System, task_body: dict) -> None:
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(f"{system.api_url}/dashboard", wait_until="load", timeout=30_000)
            page.evaluate("window.__dashboardMarker = 'still the same page'")

            accepted = httpx.post(f"{system.api_url}/api/v1/tasks", json=task_body, timeout=30)
            assert accepted.status_code == 202, accepted.text
            task_id = accepted.json()["task_id"]

            row = page.locator("#tasks tbody tr", has_text=task_id)
            sync_api.expect(row.locator(".state")).to_have_text("SUCCESS", timeout=120_000)
            sync_api.expect(row).to_contain_text("100%")
            services = page.locator("#workers tbody tr td:first-child")
            for service in STAGE_SERVICES:
                sync_api.expect(services.filter(has_text=re.compile(f"^{service}$"))).not_to_have_count(0)
            sync_api.expect(page.locator("#gpus tbody tr")).not_to_have_count(0)

            # The rows above came from the script's fetches, not from a reload.
            assert page.evaluate("window.__dashboardMarker") == "still the same page"
            assert int(page.evaluate("document.body.dataset.refreshes || '0'")) >= 1
            sync_api.expect(page.locator("#refreshed")).to_have_text(re.compile(r"^Updated \d\d:\d\d:\d\d UTC$"))

            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # The row's link opens the task's own page: four stages done, the input previewed.
            row.locator(f"a[href='/dashboard/tasks/{task_id}']").click()
            page.wait_for_url(f"**/dashboard/tasks/{task_id}", timeout=30_000)
            sync_api.expect(page.locator("#timeline tbody tr .s-SUCCESS")).to_have_count(4)
            page.wait_for_function("document.querySelector('#previews img').naturalWidth > 0", timeout=15_000)
            page.screenshot(path=str(TASK_SCREENSHOT), full_page=True)
        finally:
            browser.close()
    print(f"dashboard screenshots: {SCREENSHOT}, {TASK_SCREENSHOT}")
    assert errors == []

    with Image.open(SCREENSHOT) as shot:
        assert shot.width >= 1440 and shot.height >= 900
        grey = shot.convert("L")
        low, high = grey.getextrema()
        assert high - low > 100, "the screenshot is (nearly) one colour"
        assert len(grey.histogram()) == 256 and sum(1 for n in grey.histogram() if n) > 20


def test_a_browser_signs_in_with_an_api_key_and_out_again(tmp_path: Path) -> None:
    key = "tm-browser-" + "k" * 24
    page_errors: list[str] = []
    with api_only(tmp_path, TM_API_KEYS=key) as system, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(f"{system.api_url}/dashboard", wait_until="load", timeout=30_000)
            form = page.locator("form[action='/dashboard/signin']")
            sync_api.expect(form).to_be_visible()

            page.fill("#key", "not-the-key")
            page.click("button[type=submit]")
            sync_api.expect(page.locator(".error")).to_have_text("That is not a valid API key.")

            page.fill("#key", key)
            page.click("button[type=submit]")
            sync_api.expect(page.locator("h2", has_text="Worker pool")).to_be_visible()
            assert page.url == f"{system.api_url}/dashboard"
            # The refresh script's fetches carry the session too: the page keeps updating in place.
            page.wait_for_function("Number(document.body.dataset.refreshes || 0) >= 2", timeout=15_000)
            sync_api.expect(page.locator("#refreshed")).to_have_class("live")
            assert all(c["httpOnly"] for c in page.context.cookies() if c["name"] == "tm_dashboard")
            assert page.evaluate("document.cookie") == ""  # not readable by scripts

            page.click("text=Sign out")
            sync_api.expect(form).to_be_visible()
        finally:
            browser.close()
    assert page_errors == []
