"""HEAD answers on every GET route with GET's status and headers and no body (services/api/head.py),
the never-ending SSE route included, and stays out of the OpenAPI document."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.api.conftest import KEY_1, SUBMISSION, api_only
from tests.system import System

COMPARED = ("content-type", "content-length", "cache-control", "www-authenticate", "allow")


@pytest.fixture(scope="module")
def open_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with api_only(tmp_path_factory.mktemp("head")) as system:
        yield system


@pytest.fixture
async def api(open_api: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=open_api.api_url, timeout=30) as client:
        yield client


async def assert_like_get(
    api: httpx.AsyncClient, path: str, status: int, headers: dict[str, str] | None = None, live: bool = False
) -> None:
    """HEAD and GET answer alike (a `live` page's length changes from one request to the next)."""
    get, head = await api.get(path, headers=headers), await api.head(path, headers=headers)
    assert (head.status_code, get.status_code) == (status, status), (path, head.status_code, get.status_code)
    assert head.content == b""
    for name in COMPARED:
        if not (live and name == "content-length"):
            assert head.headers.get(name) == get.headers.get(name), (path, name)


async def test_health_the_dashboard_and_the_documents(api: httpx.AsyncClient) -> None:
    for path in ("/health", "/dashboard/metrics", "/openapi.json", "/docs"):
        await assert_like_get(api, path, 200)
    await assert_like_get(api, "/dashboard", 200, live=True)
    await assert_like_get(api, "/dashboard/data", 200, live=True)


async def test_a_task_and_its_errors(api: httpx.AsyncClient) -> None:
    task_id = (await api.post("/api/v1/tasks", json=SUBMISSION)).json()["task_id"]
    await assert_like_get(api, f"/api/v1/tasks/{task_id}", 200)
    await assert_like_get(api, "/api/v1/tasks/not-a-task", 404)
    await assert_like_get(api, "/api/v1/tasks", 200, live=True)  # the list: a task may be added meanwhile
    # A path without GET answers HEAD as it answers GET: 405, and Allow says which methods do answer.
    await assert_like_get(api, f"/api/v1/tasks/{task_id}/revoke", 405)
    refused = await api.put(f"/api/v1/tasks/{task_id}")
    assert refused.status_code == 405 and refused.headers["allow"] == "DELETE, GET, HEAD"


async def test_the_event_stream_of_a_running_task_ends_after_its_headers(
    api: httpx.AsyncClient, open_api: System
) -> None:
    task_id = (await api.post("/api/v1/tasks", json=SUBMISSION)).json()["task_id"]  # queued: its stream never ends
    async with asyncio.timeout(10):
        for _ in range(3):  # and the connection is fit for the next request
            head = await api.head(f"/api/v1/tasks/{task_id}/events")
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-type"].startswith("text/event-stream")
        assert (await api.head(f"/api/v1/tasks/{task_id}/events", headers={"Last-Event-ID": "x"})).status_code == 400
    assert "Traceback" not in (open_api.log_dir / "api.log").read_text()


async def test_head_stays_out_of_the_openapi_document(api: httpx.AsyncClient) -> None:
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert not any("head" in operations for operations in paths.values())


async def test_a_guarded_dashboard_answers_head_as_get(secured: System) -> None:
    async with httpx.AsyncClient(base_url=secured.api_url, timeout=30) as api:
        await assert_like_get(api, "/dashboard", 401, {"Accept": "text/html"})  # the sign-in page's headers
        await assert_like_get(api, "/dashboard", 200, {"X-API-Key": KEY_1}, live=True)
        await assert_like_get(api, "/api/v1/tasks/not-a-task", 401)
