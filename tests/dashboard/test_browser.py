"""The dashboard in a real headless Chromium: it refreshes itself in place (no page reload) while a
task runs to SUCCESS, a full-page screenshot of it is a real render, its row links to the task's own
page (screenshotted too), a failed task is retried by clicking and succeeds, the last hour's charts
draw the runs and redraw themselves, and with API keys on a browser signs in through the form (session
cookie) and out again.

Needs Debian's chromium at /usr/bin/chromium and the `playwright` package (the test extra); it
skips cleanly without them. Playwright's own browser download is never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.api.conftest import api_only
from tests.dashboard.conftest import TASK, png
from tests.servers import StaticHTTPServer
from tests.system import ROOT, STAGE_SERVICES, System, run_ended, wait_terminal

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
CHARTS_SCREENSHOT = ROOT / "test-output" / "charts.png"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


@contextlib.contextmanager
def chromium_page(errors: list[str], size: tuple[int, int], console: bool = True) -> Iterator[Any]:
    """A page in the system's headless Chromium; uncaught script errors (and console errors) go to `errors`."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            if console:
                page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            yield page
        finally:
            browser.close()


def test_dashboard_follows_a_task_without_reloading(system: System, task_body: dict) -> None:
    errors: list[str] = []
    with chromium_page(errors, (1440, 900)) as page:
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
    print(f"dashboard screenshots: {SCREENSHOT}, {TASK_SCREENSHOT}")
    assert errors == []

    assert_real_render(SCREENSHOT, (1440, 900))


def assert_real_render(path: Path, least: tuple[int, int]) -> None:
    with Image.open(path) as shot:
        assert shot.width >= least[0] and shot.height >= least[1]
        grey = shot.convert("L")
        low, high = grey.getextrema()
        assert high - low > 100, "the screenshot is (nearly) one colour"
        assert sum(1 for n in grey.histogram() if n) > 20


def test_a_failed_task_is_retried_by_clicking_and_the_charts_draw_both_runs(
    system: System, http_server: StaticHTTPServer, tmp_path: Path
) -> None:
    name = f"{uuid.uuid4().hex}.png"  # not served yet: the fetch gets a 404, a permanent failure
    body = {"task_name": TASK, "args": [http_server.url(name), (tmp_path / "out.png").as_uri()]}
    accepted = httpx.post(f"{system.api_url}/api/v1/tasks", json=body, timeout=30)
    assert accepted.status_code == 202, accepted.text
    task_id = accepted.json()["task_id"]
    assert asyncio.run(wait_terminal(system.nats_url, [task_id], timeout_s=60))[task_id]["state"] == "FAILURE"
    http_server.add(name, png())  # what the first run lacked

    errors: list[str] = []
    with chromium_page(errors, (1440, 900), console=False) as page:
        page.goto(f"{system.api_url}/dashboard/tasks/{task_id}", wait_until="load", timeout=30_000)
        sync_api.expect(page.locator("#facts .state")).to_have_text("FAILURE")
        sync_api.expect(page.locator(".error").first).to_contain_text("404")
        page.click("#retry")
        page.wait_for_url(f"**/dashboard/tasks/{task_id}", timeout=30_000)  # back on its page, run 2
        with ThreadPoolExecutor(1) as aside:  # playwright's sync API holds this thread's event loop
            ended = aside.submit(asyncio.run, run_ended(system.nats_url, task_id, run=2, timeout_s=90))
            assert ended.result()["state"] == "SUCCESS"
        page.reload()
        sync_api.expect(page.locator("#facts .state")).to_have_text("SUCCESS")
        sync_api.expect(page.locator("#retry")).to_have_count(0)  # nothing to retry any more

        page.goto(f"{system.api_url}/dashboard", wait_until="load", timeout=30_000)
        for chart, series in (("completions", "SUCCESS"), ("completions", "FAILURE"), ("latency", "p99")):
            line = page.locator(f"#chart-{chart} path[data-series='{series}']")
            sync_api.expect(line).to_have_count(1)
        for chart in ("completions", "latency", "queues"):
            box = page.locator(f"#chart-{chart} svg").bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 80, (chart, box)
        # The script redraws the charts in place every 10 s.
        page.wait_for_function("Number(document.body.dataset.chartRedraws || 0) >= 1", timeout=30_000)
        sync_api.expect(page.locator("#chart-completions path[data-series='SUCCESS']")).to_have_count(1)
        CHARTS_SCREENSHOT.parent.mkdir(exist_ok=True)
        page.locator("#charts").screenshot(path=str(CHARTS_SCREENSHOT))
    print(f"charts screenshot: {CHARTS_SCREENSHOT}")
    assert errors == []
    assert_real_render(CHARTS_SCREENSHOT, (800, 150))


def test_a_browser_signs_in_with_an_api_key_and_out_again(tmp_path: Path) -> None:
    key = "tm-browser-" + "k" * 24
    page_errors: list[str] = []
    with api_only(tmp_path, TM_API_KEYS=key) as system, chromium_page(page_errors, (1280, 800), console=False) as page:
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
    assert page_errors == []
