"""GET /api/v1/tasks: newest first, filters, cursor pages, history kept TM_RESULT_TTL_S (issue #13).

The API runs alone on its own NATS; tasks are written into the task bucket as the pipeline would leave
them (every state, category and model), and the list is read over HTTP as a client reads it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.api.tasks.index import Filters, TaskIndex, TaskSummary
from shared.messages import Category, Classification
from shared.taskstate.status import TaskState, TaskStatus, format_time
from tests.api.conftest import SUBMISSION
from tests.system import System, started_on_own_nats, store_statuses

WAIT_S = 15.0


def stored(n: int, state: TaskState, *, ago_s: float = 0.0, **fields: Any) -> TaskStatus:
    """Task number `n`, submitted `n` ms after a fixed instant (or `ago_s` before now)."""
    moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=n) if not ago_s else None
    status = TaskStatus.new(
        str(uuid.UUID(int=n + 1)), priority=n % 11, input_url="https://example.com/in.jpg", output_url="s3://b/o.png"
    )
    status.submitted_at = format_time(moment or datetime.now(UTC) - timedelta(seconds=ago_s))
    status.state = state
    if state.terminal:
        status.completed_at = format_time(datetime.now(UTC) - timedelta(seconds=ago_s))
    for name, value in fields.items():
        setattr(status, name, value)
    return status


CATEGORIES = [Category.PHOTO, Category.ANIME, Category.TEXT, Category.PORTRAIT]
STATES = [TaskState.SUCCESS, TaskState.FAILURE, TaskState.PENDING, TaskState.STARTED, TaskState.REVOKED]


def corpus() -> list[TaskStatus]:
    tasks = []
    for n in range(60):
        category = CATEGORIES[n % 4]
        state = STATES[n % 5]
        result = (
            {"model": "realesr-animevideov3"} if category == Category.ANIME and state == TaskState.SUCCESS else None
        )
        classification = Classification(category=category, width=8, height=6, aspect_ratio=1.33)
        tasks.append(stored(n, state, classification=classification, result=result))
    return tasks


@pytest.fixture
async def listed(tmp_path: Path) -> AsyncIterator[tuple[System, list[TaskStatus]]]:
    async with started_on_own_nats(tmp_path, {}, "api") as system:
        tasks = corpus()
        await store_statuses(system.nats_url, tasks)
        await until_listed(system, {"limit": 200}, len(tasks))
        yield system, tasks


async def get(system: System, params: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=system.api_url, timeout=10) as client:
        return await client.get("/api/v1/tasks", params=params)


async def until_listed(system: System, params: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The list once it shows `count` tasks: each API keeps its list from a watch of the bucket, a few
    milliseconds behind a write; nothing a client can await, so ask until it shows (bounded)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        response = await get(system, params)
        if response.status_code == 200 and len(response.json()["tasks"]) == count:
            return response.json()["tasks"]
        assert time.monotonic() < deadline, f"{params}: {response.status_code} {response.text[:300]}"
        await asyncio.sleep(0.05)


def ids(tasks: list[Any]) -> list[str]:
    return [t["task_id"] if isinstance(t, dict) else t.task_id for t in tasks]


async def test_pages_newest_first_cover_every_task_once(listed: tuple[System, list[TaskStatus]]) -> None:
    system, tasks = listed
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 25}
    while True:
        page = (await get(system, params)).json()
        seen += page["tasks"]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert ids(seen) == ids(reversed(tasks))
    assert len(seen) == 60 and params["cursor"]  # three pages: 25, 25, 10


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"state": "FAILURE"}, lambda t: t.state == TaskState.FAILURE),
        ({"state": ["FAILURE", "REVOKED"]}, lambda t: t.state in (TaskState.FAILURE, TaskState.REVOKED)),
        ({"priority": 3}, lambda t: t.priority == 3),
        ({"category": "anime"}, lambda t: t.classification.category == Category.ANIME),
        ({"model": "realesr-animevideov3"}, lambda t: (t.result or {}).get("model") == "realesr-animevideov3"),
        ({"category": "text", "state": "PENDING"},
         lambda t: t.classification.category == "text" and t.state == "PENDING"),
        ({"submitted_since": "2026-01-01T00:00:00.010Z", "submitted_until": "2026-01-01T00:00:00.020+00:00"},
         lambda t: 10 <= int(t.task_id.replace("-", ""), 16) - 1 < 20),
        ({"id_prefix": "00000000-0000-0000-0000-00000000001"}, lambda t: t.task_id[-2] == "1"),
    ],
)  # fmt: skip
async def test_filters(listed: tuple[System, list[TaskStatus]], params: dict[str, Any], expected: Any) -> None:
    system, tasks = listed
    wanted = [t for t in reversed(tasks) if expected(t)]
    assert wanted, "a filter that matches nothing proves nothing"
    page = (await get(system, {**params, "limit": 200})).json()
    assert ids(page["tasks"]) == ids(wanted)
    assert page["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "DONE"}, "query.state"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 201}, "query.limit"),
        ({"priority": 11}, "query.priority"),
        ({"category": "landscape"}, "query.category"),
        ({"model": "RealESRGAN_x9"}, "query.model"),
        ({"cursor": "!!"}, "query.cursor"),
        ({"submitted_since": "2026-01-01T00:00:00"}, "query.submitted_since"),
        ({"id_prefix": "XYZ"}, "query.id_prefix"),
    ],
)
async def test_a_bad_query_is_a_400_naming_the_field(
    listed: tuple[System, list[TaskStatus]], params: dict[str, Any], field: str
) -> None:
    response = await get(listed[0], params)
    assert response.status_code == 400
    assert response.json()["detail"].startswith(field), response.text


async def test_new_and_deleted_tasks_show_in_the_list(listed: tuple[System, list[TaskStatus]]) -> None:
    system, tasks = listed
    async with httpx.AsyncClient(base_url=system.api_url, timeout=10) as client:
        created = (await client.post("/api/v1/tasks", json=SUBMISSION)).json()["task_id"]
        newest = await until_listed(system, {"limit": 200}, 61)
        assert newest[0]["task_id"] == created and newest[0]["state"] == "PENDING"
        assert (await client.delete(f"/api/v1/tasks/{tasks[-1].task_id}")).status_code in (200, 204)
    assert tasks[-1].task_id not in ids(await until_listed(system, {"limit": 200}, 60))


async def test_history_past_its_keeping_time_is_removed(tmp_path: Path) -> None:
    """TM_RESULT_TTL_S is 4 s here: an ended task whose end is older goes, an unfinished one stays."""
    old_end = stored(1000, TaskState.SUCCESS, ago_s=3600)
    old_running = stored(1001, TaskState.STARTED, ago_s=3600)
    async with started_on_own_nats(tmp_path, {"TM_RESULT_TTL_S": "4"}, "api") as system:
        await store_statuses(system.nats_url, [old_end, old_running])
        await until_listed(system, {}, 1)  # the sweeper's next look (every TTL / 2) removes the ended one
        async with httpx.AsyncClient(base_url=system.api_url, timeout=10) as client:
            assert (await client.get(f"/api/v1/tasks/{old_end.task_id}")).status_code == 404
            assert (await client.get(f"/api/v1/tasks/{old_running.task_id}")).json()["state"] == "STARTED"


def test_ended_before_names_only_ended_tasks_past_the_cutoff() -> None:
    index = TaskIndex()
    for status in [stored(1, TaskState.SUCCESS, ago_s=100), stored(2, TaskState.FAILURE, ago_s=10),
                   stored(3, TaskState.STARTED, ago_s=100)]:  # fmt: skip
        index.put(TaskSummary.of(status))
    assert index.ended_before(datetime.now(UTC) - timedelta(seconds=50)) == [str(uuid.UUID(int=2))]


def test_the_index_keeps_order_through_rewrites_and_removals() -> None:
    index = TaskIndex()
    rows = [TaskSummary.of(t) for t in corpus()[:10]]
    for row in reversed(rows):
        index.put(row)
    index.put(rows[3])  # a rewrite of the same task keeps one place
    index.remove(rows[5].task_id)
    page, more = index.page(Filters(), 4)
    assert ids(page) == ids([rows[9], rows[8], rows[7], rows[6]]) and more
    page, more = index.page(Filters(), 10, after=page[-1].key)
    assert ids(page) == ids([rows[4], rows[3], rows[2], rows[1], rows[0]]) and not more
    assert len(index) == 9


@pytest.mark.parametrize("states", [(), (TaskState.FAILURE,), (TaskState.SUCCESS, TaskState.PENDING)])
@pytest.mark.parametrize("priority", [None, 0, 3])
@pytest.mark.parametrize("category", [None, "anime", "photo"])
@pytest.mark.parametrize("model", [None, "realesr-animevideov3"])
def test_every_filter_combination_finds_what_a_plain_scan_finds(
    states: tuple[TaskState, ...], priority: int | None, category: str | None, model: str | None
) -> None:
    rows = [TaskSummary.of(t) for t in corpus()]
    index = TaskIndex()
    for row in rows:
        index.put(row)
    filters = Filters(states=frozenset(states), priority=priority, category=category, model=model)
    expected = [
        r for r in sorted(rows, key=lambda r: r.key, reverse=True)
        if (not states or r.state in states) and priority in (None, r.priority)
        and category in (None, r.category) and model in (None, r.model)
    ]  # fmt: skip
    page, more = index.page(filters, 200)
    assert ids(page) == ids(expected) and not more
