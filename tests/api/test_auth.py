"""API keys: every /api/v1 and /dashboard route needs one when keys are configured; /health and
the docs stay open; keys never reach the logs; without keys nothing changes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import KEY_1, KEY_2, SUBMISSION, WRONG, api_only
from tests.system import System

SOME_ID = str(uuid.uuid4())
GUARDED = [
    ("POST", "/api/v1/tasks"),
    ("GET", f"/api/v1/tasks/{SOME_ID}"),
    ("DELETE", f"/api/v1/tasks/{SOME_ID}"),
    ("POST", f"/api/v1/tasks/{SOME_ID}/revoke"),
    ("GET", "/dashboard"),
    ("GET", "/dashboard/metrics"),
]
BAD_CREDENTIALS = {
    "missing": {},
    "wrong bearer": {"Authorization": f"Bearer {WRONG}"},
    "wrong x-api-key": {"X-API-Key": WRONG},
    "key as basic auth": {"Authorization": f"Basic {KEY_1}"},
    "bearer without a key": {"Authorization": "Bearer"},
    "key prefix": {"X-API-Key": KEY_1[:-1]},
}


@pytest.fixture
async def api(secured: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=secured.api_url, timeout=30) as client:
        yield client


def _body(method: str, path: str) -> dict | None:
    return SUBMISSION if (method, path) == ("POST", "/api/v1/tasks") else None


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
@pytest.mark.parametrize(("method", "path"), GUARDED)
async def test_guarded_routes_refuse_without_a_valid_key(
    api: httpx.AsyncClient, method: str, path: str, credentials: dict[str, str]
) -> None:
    response = await api.request(method, path, headers=credentials, json=_body(method, path))
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "key" in detail


@pytest.mark.parametrize(
    "credentials",
    [{"Authorization": f"Bearer {KEY_1}"}, {"X-API-Key": KEY_1}, {"Authorization": f"Bearer {KEY_2}"}],
    ids=["bearer", "x-api-key", "second key"],
)
async def test_a_valid_key_opens_every_route(api: httpx.AsyncClient, credentials: dict[str, str]) -> None:
    submitted = await api.post("/api/v1/tasks", json=SUBMISSION, headers=credentials)
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["task_id"]
    assert (await api.get(f"/api/v1/tasks/{task_id}", headers=credentials)).json()["state"] == "PENDING"
    assert (await api.post(f"/api/v1/tasks/{task_id}/revoke", headers=credentials)).json()["state"] == "REVOKED"
    assert (await api.delete(f"/api/v1/tasks/{task_id}", headers=credentials)).status_code == 200
    assert (await api.get(f"/api/v1/tasks/{task_id}", headers=credentials)).status_code == 404
    assert "Worker pool" in (await api.get("/dashboard", headers=credentials)).text
    assert "tasks_submitted_total" in (await api.get("/dashboard/metrics", headers=credentials)).text


@pytest.mark.parametrize("path", ["/health", "/docs", "/redoc", "/openapi.json"])
async def test_health_and_docs_stay_open(api: httpx.AsyncClient, path: str) -> None:
    assert (await api.get(path)).status_code == 200


async def test_openapi_offers_both_schemes(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["type"] == "http" and schemes["HTTPBearer"]["scheme"] == "bearer"
    assert schemes["APIKeyHeader"]["in"] == "header" and schemes["APIKeyHeader"]["name"] == "X-API-Key"
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path in ("/health", "/dashboard/signin", "/dashboard/signout"):  # open: how a browser gets a key in
                assert "security" not in operation
            else:
                assert operation["security"] == [{"HTTPBearer": []}, {"APIKeyHeader": []}], path
                assert "401" in operation["responses"], path


async def test_keys_never_reach_the_log(api: httpx.AsyncClient, secured: System) -> None:
    # Requests with every key, right and wrong, then read everything the API process wrote.
    for key in (KEY_1, KEY_2, WRONG):
        await api.post("/api/v1/tasks", json=SUBMISSION, headers={"Authorization": f"Bearer {key}"})
        await api.get(f"/api/v1/tasks/{SOME_ID}", headers={"X-API-Key": key})
    log = (secured.log_dir / "api.log").read_text()
    assert '"api_keys": 2' in log  # the log is being written, and says how many keys there are
    assert "task_submitted" in log
    for key in (KEY_1, KEY_2, WRONG):
        assert key not in log
        assert key[3:15] not in log


@pytest.mark.system_env(TM_API_KEYS="")
async def test_without_keys_nothing_is_guarded(api_system: System) -> None:
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api:
        submitted = await api.post("/api/v1/tasks", json=SUBMISSION, headers={"X-API-Key": WRONG})
        assert submitted.status_code == 202, submitted.text
        assert (await api.get(f"/api/v1/tasks/{submitted.json()['task_id']}")).status_code == 200
        assert (await api.get("/dashboard")).status_code == 200
        assert (await api.get("/dashboard/metrics")).status_code == 200
        schema = (await api.get("/openapi.json")).json()
    assert "securitySchemes" not in schema.get("components", {})
    assert all("security" not in op for ops in schema["paths"].values() for op in ops.values())


def test_keys_from_a_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY_2}\n\n  {KEY_1}  \n")
    with api_only(tmp_path / "api", TM_API_KEYS_FILE=str(keys)) as system, httpx.Client(base_url=system.api_url) as api:
        assert api.get("/dashboard/metrics", headers={"X-API-Key": KEY_1}).status_code == 200
        assert api.get("/dashboard/metrics", headers={"Authorization": f"Bearer {KEY_2}"}).status_code == 200
        assert api.get("/dashboard/metrics", headers={"X-API-Key": WRONG}).status_code == 401
        assert api.get("/dashboard/metrics").status_code == 401
