"""A task's page, /dashboard/tasks/{id}: its stages with their times, its facts, previews of http(s)
images only, everything escaped; 404 for an unknown id; the dashboard's recent rows link to it; the
task search, /dashboard/tasks: GET /api/v1/tasks's filters under the same names and rules, page by page."""

from __future__ import annotations

import asyncio
import html
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from services.api.dashboard.page import cell
from services.api.dashboard.taskpage import render_task_page, search_query
from shared.messages import Category, Classification, Stage
from shared.taskstate.status import Subtask, TaskState, TaskStatus, format_time
from tests.system import System, store_statuses

HOSTILE = "<script>alert(1)</script>"
TASK_ID = "0b5c3c1e-2f0a-4a5e-9a9e-3a1c2d4e5f60"


def finished(**fields: object) -> TaskStatus:
    """A task that ran every stage: each queued, started and completed at known times."""
    stages = [
        Subtask(name=Stage.FETCH, state=TaskState.SUCCESS, worker_id="fetcher-h-1", attempts=1,
                queued_at="2026-01-02T03:04:00.000Z", started_at="2026-01-02T03:04:00.250Z",
                completed_at="2026-01-02T03:04:01.000Z"),
        Subtask(name=Stage.CLASSIFY, state=TaskState.SUCCESS, worker_id="classifier-h-2", attempts=1,
                queued_at="2026-01-02T03:04:01.000Z", started_at="2026-01-02T03:04:03.000Z",
                completed_at="2026-01-02T03:04:04.000Z"),
        Subtask(name=Stage.UPSCALE, state=TaskState.SUCCESS, worker_id="upscaler-h-3", attempts=2,
                queued_at="2026-01-02T03:04:04.000Z", started_at="2026-01-02T03:04:05.000Z",
                completed_at="2026-01-02T03:05:35.000Z"),
        Subtask(name=Stage.UPLOAD, state=TaskState.SUCCESS, worker_id="uploader-h-4", attempts=1,
                queued_at="2026-01-02T03:05:35.000Z", started_at="2026-01-02T03:05:35.500Z",
                completed_at="2026-01-02T03:05:36.000Z"),
    ]  # fmt: skip
    values: dict = {
        "task_id": TASK_ID, "state": TaskState.SUCCESS, "progress": 1.0, "run": 2, "priority": 7,
        "submitted_at": "2026-01-02T03:04:00.000Z", "completed_at": "2026-01-02T03:05:36.000Z",
        "subtasks": stages, "input_url": "https://img.example/in.png", "output_url": "http://out.example/o.png",
        "result": {"model": "RealESRGAN_x4plus"}, "worker_type": "gpu",
        "classification": Classification(category="photo", width=24, height=16, aspect_ratio=1.5),
    }  # fmt: skip
    return TaskStatus(**(values | fields))


def test_each_stage_shows_its_times_worker_and_attempts() -> None:
    page = render_task_page(finished())
    rows = dict(re.findall(r"<tr class='stage' data-stage='(\w+)'>(.*?)</tr>", page))
    assert list(rows) == ["fetch", "classify", "upscale", "upload"]
    assert "fetcher-h-1" in rows["fetch"] and "250ms" in rows["fetch"] and "750ms" in rows["fetch"]
    assert "<td>2s</td>" in rows["classify"] and "<td>1s</td>" in rows["classify"]  # waited, took
    assert "<td>2</td>" in rows["upscale"] and "1m30s" in rows["upscale"]  # attempts, took
    assert "<span title='2026-01-02T03:04:05.000Z'>03:04:05.000</span>" in rows["upscale"]
    for value in ("RealESRGAN_x4plus", "photo (24x16)", "gpu", "1m36s", "<dd>7</dd>", "<dd>2</dd>"):
        assert value in page
    assert "<span class='state s-SUCCESS'>SUCCESS</span>" in page


def test_http_images_are_previewed_and_linked() -> None:
    page = render_task_page(finished())
    assert "<img src='http://out.example/o.png'" in page and "<img src='https://img.example/in.png'" in page
    assert "<a href='http://out.example/o.png' rel='noreferrer noopener'>" in page
    assert "referrerpolicy='no-referrer'" in page


def test_other_schemes_are_shown_as_text_without_preview() -> None:
    page = render_task_page(finished(input_url="file:///data/in.png", output_url="s3://bucket/out.png"))
    assert "<img" not in page and "id='previews'" not in page
    assert "<code>file:///data/in.png</code>" in page and "<code>s3://bucket/out.png</code>" in page
    assert "href='s3:" not in page and "href='file:" not in page


def test_hostile_urls_and_errors_are_escaped() -> None:
    hostile_url = "https://x.example/a.png?'><script>alert(1)</script>"
    status = finished(state=TaskState.FAILURE, error=HOSTILE, output_url=hostile_url, result={"model": HOSTILE})
    status.subtasks[2].error = HOSTILE
    status.subtasks[1].worker_id = HOSTILE
    page = render_task_page(status)
    assert "<script" not in page  # the task page has no script of its own
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src='https://x.example/a.png?&#x27;&gt;&lt;script&gt;" in page
    assert render_task_page(finished(input_url="javascript:alert(1)")).count("href='javascript") == 0


def test_recent_task_rows_link_to_their_page() -> None:
    assert cell("task", TASK_ID, {}) == f"<a href='/dashboard/tasks/{TASK_ID}'><code>{TASK_ID}</code></a>"
    assert "<a href='/dashboard/tasks/%3Cb%3E'><code>&lt;b&gt;</code></a>" == cell("task", "<b>", {})


async def test_a_queued_task_has_a_page_and_unknown_ids_404(api_alone: System) -> None:
    body = {"task_name": "image_super_resolution_pipeline", "priority": 4,
            "args": ["https://example.com/in.png", "s3://bucket/out.png"]}  # fmt: skip
    async with httpx.AsyncClient(base_url=api_alone.api_url, timeout=30) as api:
        task_id = (await api.post("/api/v1/tasks", json=body)).json()["task_id"]
        page = await api.get(f"/dashboard/tasks/{task_id}")
        dashboard = (await api.get("/dashboard")).text
        unknown = await api.get(f"/dashboard/tasks/{uuid.uuid4()}")
        upper = await api.get(f"/dashboard/tasks/{task_id.upper()}")
        hostile = await api.get("/dashboard/tasks/%3Cscript%3Ealert(1)")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f"<code>{task_id}</code>" in page.text and "<span class='state s-PENDING'>PENDING</span>" in page.text
    assert page.text.count("<tr class='stage'") == 4 and "<dd>4</dd>" in page.text
    assert "<img src='https://example.com/in.png'" in page.text and "<code>s3://bucket/out.png</code>" in page.text
    assert f"<a href='/dashboard/tasks/{task_id}'>" in dashboard
    for missing in (unknown, upper, hostile):
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
        assert "No task" in missing.text
    assert "<script>" not in hostile.text and "&lt;script&gt;" in hostile.text


async def until_listed(api: httpx.AsyncClient, params: dict, task_id: str) -> None:
    """The API's task index follows the store's writes a few milliseconds behind: ask until it shows (bounded)."""
    for _ in range(100):
        if task_id in {t["task_id"] for t in (await api.get("/api/v1/tasks", params=params)).json()["tasks"]}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{task_id} not listed for {params}")


async def test_the_search_finds_tasks_by_state_and_id_prefix(api_alone: System) -> None:
    body = {"task_name": "image_super_resolution_pipeline", "args": ["https://example.com/in.png", "s3://bucket/o.png"]}
    async with httpx.AsyncClient(base_url=api_alone.api_url, timeout=30) as api:
        first, second = [(await api.post("/api/v1/tasks", json=body)).json()["task_id"] for _ in range(2)]
        assert (await api.post(f"/api/v1/tasks/{second}/revoke")).status_code == 200
        await until_listed(api, {"state": "REVOKED"}, second)
        dashboard = (await api.get("/dashboard")).text
        pending = (await api.get("/dashboard/tasks", params={"state": "PENDING"})).text
        revoked = (await api.get("/dashboard/tasks", params={"state": "REVOKED", "id_prefix": second[:6]})).text
        by_prefix = (await api.get("/dashboard/tasks", params={"id_prefix": first[:8].upper()})).text
        everything = (await api.get("/dashboard/tasks")).text
        none = (await api.get("/dashboard/tasks", params={"state": "SUCCESS"})).text
        bad_state = await api.get("/dashboard/tasks", params={"state": "<b>"})
        bad_prefix = await api.get("/dashboard/tasks", params={"id_prefix": "xyz'><b>"})
    assert "<form id='search' method='get' action='/dashboard/tasks'>" in dashboard
    link = "<a href='/dashboard/tasks/{}'>"
    assert link.format(first) in pending and link.format(second) not in pending
    assert link.format(second) in revoked and link.format(first) not in revoked
    assert "value='REVOKED' checked>" in revoked and f"value='{second[:6]}'" in revoked
    assert link.format(first) in by_prefix  # upper case is read as lower
    assert link.format(first) in everything and link.format(second) in everything
    assert "No task matches." in none
    for refused in (bad_state, bad_prefix):
        assert refused.status_code == 400 and "<b>" not in refused.text
    assert "query.state.0: Input should be 'PENDING'" in html.unescape(bad_state.text)
    assert "value='xyz&#x27;&gt;&lt;b&gt;'" in bad_prefix.text  # shown as typed, escaped


STATES = [TaskState.SUCCESS, TaskState.FAILURE, TaskState.PENDING, TaskState.STARTED, TaskState.REVOKED]
CATEGORIES = list(Category)
ANIME_MODEL = "realesr-animevideov3"


def corpus(now: datetime) -> list[TaskStatus]:
    """24 tasks, newest first: task n submitted 2n + 1.5 minutes before `now` (no task on a minute's edge),
    states, priorities, categories and models spread so that every filter keeps some and drops some."""
    tasks = []
    for n in range(24):
        status = TaskStatus.new(str(uuid.UUID(int=n + 1)), priority=n % 3, input_url="https://example.com/in.png")
        status.submitted_at = format_time(now - timedelta(minutes=2 * n + 1.5))
        status.state = STATES[n % 5]
        status.classification = Classification(category=CATEGORIES[n % 4], width=8, height=6, aspect_ratio=1.33)
        status.result = {"model": ANIME_MODEL} if n % 2 else None
        tasks.append(status)
    return tasks


async def stored(system: System, api: httpx.AsyncClient, now: datetime) -> list[TaskStatus]:
    """The corpus written into the task bucket as the pipeline leaves tasks, once the API's index shows it all."""
    tasks = corpus(now)
    await store_statuses(system.nats_url, tasks)
    deadline = time.monotonic() + 15
    while len((await api.get("/api/v1/tasks", params={"limit": 200})).json()["tasks"]) < len(tasks):
        assert time.monotonic() < deadline, "the API's task index never showed every stored task"
        await asyncio.sleep(0.05)
    return tasks


def found(page: str) -> list[str]:
    """The task ids in a results table, in its order."""
    return re.findall(r"<tr><td><a href='/dashboard/tasks/([^']+)'>", page)


def link(page: str, name: str) -> str | None:
    """The href of the page's link with this id (next, first), unescaped, or None."""
    match = re.search(rf"<a id='{name}'[^>]* href='([^']+)'>", page)
    return html.unescape(match.group(1)) if match else None


async def test_each_filter_narrows_the_search_as_the_api_does(api_alone: System) -> None:
    now = datetime.now(UTC)
    since, until = format_time(now - timedelta(minutes=20)), format_time(now - timedelta(minutes=10))
    recent = format_time(now - timedelta(minutes=15))
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"state": ["FAILURE", "REVOKED"]}, lambda t: t.state in (TaskState.FAILURE, TaskState.REVOKED)),
        ({"priority": "2"}, lambda t: t.priority == 2),
        ({"category": "anime"}, lambda t: t.classification.category == Category.ANIME),
        ({"model": ANIME_MODEL}, lambda t: t.result is not None),
        ({"submitted_since": since, "submitted_until": until}, lambda t: since <= t.submitted_at < until),
        ({"within": "15m"}, lambda t: t.submitted_at > recent),  # the last 15 minutes, as of the request
        ({"id_prefix": "00000000-0000-0000-0000-00000000001"}, lambda t: t.task_id[-2] == "1"),
        ({"category": "text", "state": "PENDING", "priority": "", "model": ""},  # blank fields filter nothing
         lambda t: t.classification.category == Category.TEXT and t.state == TaskState.PENDING),
        ({}, lambda t: True),
    ]  # fmt: skip
    async with httpx.AsyncClient(base_url=api_alone.api_url, timeout=30) as api:
        tasks = await stored(api_alone, api, now)
        for params, expected in cases:
            wanted = [t.task_id for t in tasks if expected(t)]
            assert 0 < len(wanted) < len(tasks) or not params, f"{params} proves nothing"
            page = await api.get("/dashboard/tasks", params=params)
            assert page.status_code == 200, page.text
            assert found(page.text) == wanted, params
            if "within" not in params:  # the API names no preset
                same = {name: value for name, value in params.items() if value}
                listed = (await api.get("/api/v1/tasks", params=same)).json()["tasks"]
                assert [t["task_id"] for t in listed] == wanted, params
            assert link(page.text, "next") is None and link(page.text, "first") is None


async def test_next_page_links_walk_every_match_once_keeping_the_filters(api_alone: System) -> None:
    now = datetime.now(UTC)
    params = {"state": ["SUCCESS", "PENDING", "FAILURE"], "within": "24h", "priority": "", "limit": "4"}
    async with httpx.AsyncClient(base_url=api_alone.api_url, timeout=30) as api:
        tasks = await stored(api_alone, api, now)
        wanted = [t.task_id for t in tasks if t.state in (TaskState.SUCCESS, TaskState.PENDING, TaskState.FAILURE)]
        first_cursor = (await api.get("/api/v1/tasks", params={"state": params["state"], "limit": 4})).json()
        pages = [(await api.get("/dashboard/tasks", params=params)).text]
        while (href := link(pages[-1], "next")) is not None:
            query = parse_qs(urlsplit(href).query)
            assert query["state"] == params["state"] and query["limit"] == ["4"], href
            assert "within" not in query and "priority" not in query, href  # a fixed time, no blanks
            if len(pages) == 1:
                assert query["cursor"] == [first_cursor["next_cursor"]]  # the cursor the index hands out
            assert len(pages) < 10, "paging never ends"
            pages.append((await api.get(href)).text)
        firsts = [link(page, "first") for page in pages]
        assert firsts[0] is None and all(firsts[1:]) and len(set(firsts[1:])) == 1
        back = (await api.get(str(firsts[-1]))).text
    seen = [task_id for page in pages for task_id in found(page)]
    assert seen == wanted and len(set(seen)) == len(seen) and len(pages) == 4  # 4, 4, 4, 3 of 15
    assert found(back) == found(pages[0]) and "cursor" not in parse_qs(urlsplit(str(firsts[-1])).query)
    assert "value='SUCCESS' checked>" in pages[-1] and "<option value='24h' selected>" in pages[0]


async def test_bad_values_are_a_400_page_with_the_apis_words(api_alone: System) -> None:
    cases = [
        {"state": "DONE"}, {"state": ["PENDING", "<b>"]}, {"priority": "11"}, {"priority": "high"},
        {"category": "landscape"}, {"model": "RealESRGAN_x9<b>"}, {"submitted_since": "2026-01-01T00:00:00"},
        {"submitted_until": "yesterday"}, {"id_prefix": "xyz'><b>"}, {"limit": "0"}, {"limit": "201"},
        {"cursor": "!!"},
    ]  # fmt: skip
    async with httpx.AsyncClient(base_url=api_alone.api_url, timeout=30) as api:
        for params in cases:
            api_answer = await api.get("/api/v1/tasks", params=params)
            page = await api.get("/dashboard/tasks", params=params)
            assert api_answer.status_code == 400 and page.status_code == 400, params
            assert page.headers["content-type"].startswith("text/html")
            detail = api_answer.json()["detail"]
            assert detail.startswith(f"query.{next(iter(params))}")
            assert f"<p class='error'>{html.escape(detail)}</p>" in page.text, params
            assert "<b>" not in page.text and "<form id='search'" in page.text
        preset = await api.get("/dashboard/tasks", params={"within": "2d"})
    assert preset.status_code == 400 and "query.within: not one of 15m, 1h, 24h" in preset.text


def test_the_form_reads_blanks_as_no_filter_and_a_preset_as_a_time() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    fields = [("priority", " "), ("id_prefix", " AB12 "), ("submitted_since", "2020-01-01T00:00:00Z"),
              ("within", "1h"), ("state", "PENDING")]  # fmt: skip
    assert search_query(fields, now) == [
        ("id_prefix", "ab12"), ("state", "PENDING"), ("submitted_since", "2026-01-02T02:04:05.000Z")
    ]  # fmt: skip
