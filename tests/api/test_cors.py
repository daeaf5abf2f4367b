"""CORS (TM_CORS_ORIGINS) at the HTTP level, on real API processes: preflights and simple requests from
an allowed and a refused origin, with and without API keys; the SSE stream; the dashboard and /health
left same-origin; no CORS headers at all by default; and the `last_event_id` query parameter a new
EventSource resumes with. A real browser on another origin: tests/dashboard/test_cors_browser.py."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from services.api.app import create_app
from shared.config import Settings
from tests.api.conftest import KEY_1, SUBMISSION, api_only
from tests.sse import ServerEvent
from tests.system import System

ALLOWED = "http://app.example.test:5173"
OTHER_ALLOWED = "https://admin.example.test"
REFUSED = "https://evil.example.test"
ORIGINS = f"{ALLOWED}, {OTHER_ALLOWED}"


@pytest.fixture(scope="module")
def open_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """CORS for two origins, no API keys."""
    with api_only(tmp_path_factory.mktemp("cors-open"), TM_CORS_ORIGINS=ORIGINS) as system:
        yield system


@pytest.fixture(scope="module")
def keyed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """CORS for two origins, and an API key."""
    with api_only(tmp_path_factory.mktemp("cors-keyed"), TM_CORS_ORIGINS=ORIGINS, TM_API_KEYS=KEY_1) as system:
        yield system


def preflight(api: System, path: str, origin: str, method: str, headers: str = "") -> httpx.Response:
    ask = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        ask["Access-Control-Request-Headers"] = headers
    return httpx.options(f"{api.api_url}{path}", headers=ask, timeout=30)


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("access-control-")}


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


def test_an_allowed_origin_may_submit_json_and_read_every_route(open_api: System) -> None:
    answer = preflight(open_api, "/api/v1/tasks", ALLOWED, "POST", "content-type, idempotency-key")
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == ALLOWED  # the origin itself, never `*`
    assert {"get", "head", "post", "delete"} <= listed(answer.headers["access-control-allow-methods"])
    assert {"content-type", "idempotency-key"} <= listed(answer.headers["access-control-allow-headers"])
    assert answer.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in answer.headers  # keys travel in headers, never cookies
    assert "origin" in listed(answer.headers["vary"])  # caches keep one answer per origin

    with httpx.Client(base_url=open_api.api_url, headers={"Origin": OTHER_ALLOWED}, timeout=30) as api:
        submitted = api.post("/api/v1/tasks", json=SUBMISSION)
        assert submitted.status_code == 202, submitted.text
        assert submitted.headers["access-control-allow-origin"] == OTHER_ALLOWED
        assert {"retry-after", "www-authenticate"} <= listed(submitted.headers["access-control-expose-headers"])
        task_id = submitted.json()["task_id"]
        for path in (f"/api/v1/tasks/{task_id}", "/api/v1/tasks", "/api/v1/tasks/nope"):
            answer = api.get(path)
            assert answer.headers["access-control-allow-origin"] == OTHER_ALLOWED, path  # 404s too
        revoked = api.post(f"/api/v1/tasks/{task_id}/revoke")
        assert revoked.status_code == 200 and revoked.headers["access-control-allow-origin"] == OTHER_ALLOWED
    assert preflight(open_api, f"/api/v1/tasks/{task_id}", ALLOWED, "DELETE").status_code == 200


def test_the_event_stream_allows_last_event_id_and_carries_the_headers(open_api: System) -> None:
    task_id = httpx.post(f"{open_api.api_url}/api/v1/tasks", json=SUBMISSION, timeout=30).json()["task_id"]
    path = f"/api/v1/tasks/{task_id}/events"
    # An EventSource that reconnects sends Last-Event-ID, which is not CORS-safelisted: a preflight.
    answer = preflight(open_api, path, ALLOWED, "GET", "last-event-id")
    assert answer.status_code == 200 and "last-event-id" in listed(answer.headers["access-control-allow-headers"])

    headers = {"Origin": ALLOWED, "Accept": "text/event-stream", "Last-Event-ID": "1"}
    with httpx.stream("GET", f"{open_api.api_url}{path}", headers=headers, timeout=30) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["access-control-allow-origin"] == ALLOWED


def test_a_refused_origin_gets_no_cors_headers(open_api: System) -> None:
    for origin in (REFUSED, "http://app.example.test", "http://app.example.test:5174", "null"):
        answer = preflight(open_api, "/api/v1/tasks", origin, "POST", "content-type")
        assert answer.status_code == 400, origin  # Starlette: "Disallowed CORS origin"
        assert "access-control-allow-origin" not in answer.headers, origin
    # CORS is the browser's check: the server answers, the browser hides the answer from the page.
    # (Starlette still lists the exposed headers: without Allow-Origin they open nothing.)
    answer = httpx.get(f"{open_api.api_url}/api/v1/tasks", headers={"Origin": REFUSED}, timeout=30)
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    # An allowed origin asking for a header the API does not take is refused too.
    assert preflight(open_api, "/api/v1/tasks", ALLOWED, "POST", "x-custom").status_code == 400


def test_the_dashboard_and_health_stay_same_origin(open_api: System) -> None:
    for path in ("/dashboard", "/dashboard/data", "/dashboard/metrics", "/health", "/openapi.json"):
        answer = httpx.get(f"{open_api.api_url}{path}", headers={"Origin": ALLOWED}, timeout=30)
        assert cors_headers(answer) == {}, path
        assert cors_headers(preflight(open_api, path, ALLOWED, "GET", "x-api-key")) == {}, path


def test_with_keys_the_preflight_allows_them_and_refusals_are_readable(keyed_api: System) -> None:
    # The preflight itself carries no key (browsers never send one): it must not be a 401.
    answer = preflight(keyed_api, "/api/v1/tasks", ALLOWED, "POST", "authorization, content-type")
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ALLOWED
    answer = preflight(keyed_api, "/api/v1/tasks", ALLOWED, "POST", "x-api-key, content-type")
    assert answer.status_code == 200 and "x-api-key" in listed(answer.headers["access-control-allow-headers"])
    assert preflight(keyed_api, "/api/v1/tasks", REFUSED, "POST", "x-api-key").status_code == 400

    url = f"{keyed_api.api_url}/api/v1/tasks"
    submitted = httpx.post(url, json=SUBMISSION, headers={"Origin": ALLOWED, "X-API-Key": KEY_1}, timeout=30)
    assert submitted.status_code == 202 and submitted.headers["access-control-allow-origin"] == ALLOWED
    bearer = {"Origin": ALLOWED, "Authorization": f"Bearer {KEY_1}"}
    assert httpx.get(f"{url}/{submitted.json()['task_id']}", headers=bearer, timeout=30).status_code == 200
    # A 401 carries the CORS headers too, so the page can read why (and WWW-Authenticate is exposed).
    refused = httpx.post(url, json=SUBMISSION, headers={"Origin": ALLOWED}, timeout=30)
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ALLOWED
    assert refused.headers["www-authenticate"] == "Bearer"
    # From a refused origin the key still works (the server is no firewall) but no page can read it.
    other = httpx.post(url, json=SUBMISSION, headers={"Origin": REFUSED, "X-API-Key": KEY_1}, timeout=30)
    assert other.status_code == 202 and "access-control-allow-origin" not in other.headers


@pytest.mark.system_env(TM_CORS_ORIGINS=ALLOWED, TM_RATE_LIMIT_BURST="1", TM_RATE_LIMIT_PER_S="0.01")
def test_429_and_413_carry_the_cors_headers_and_retry_after_is_readable(api_system: System) -> None:
    with httpx.Client(base_url=api_system.api_url, headers={"Origin": ALLOWED}, timeout=30) as api:
        assert api.get("/api/v1/tasks").status_code == 200  # the one token of the read bucket
        limited = api.get("/api/v1/tasks")
        assert limited.status_code == 429 and limited.headers["access-control-allow-origin"] == ALLOWED
        assert int(limited.headers["retry-after"]) >= 1
        assert "retry-after" in listed(limited.headers["access-control-expose-headers"])
        too_big = api.post("/api/v1/tasks", content=b"{" + b" " * 70_000, headers={"Content-Type": "application/json"})
        assert too_big.status_code == 413 and too_big.headers["access-control-allow-origin"] == ALLOWED


def test_no_cors_headers_without_tm_cors_origins(secured: System) -> None:
    answer = preflight(secured, "/api/v1/tasks", ALLOWED, "POST", "content-type, x-api-key")
    assert answer.status_code == 405 and cors_headers(answer) == {}  # no preflight handling at all
    answer = httpx.get(f"{secured.api_url}/api/v1/tasks", headers={"Origin": ALLOWED, "X-API-Key": KEY_1})
    assert answer.status_code == 200 and cors_headers(answer) == {}


async def test_any_origin_with_a_star() -> None:
    # A preflight is answered by the middleware alone, before any route: no NATS needed for it.
    app = create_app(Settings(cors_origins="*"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        ask = {
            "Origin": REFUSED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key",
        }
        answer = await client.options("/api/v1/tasks", headers=ask)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in answer.headers


@pytest.mark.parametrize(
    "value",
    [
        "https://app.example.com/",
        "https://app.example.com/app",
        "app.example.com",
        "https://App.example.com",
        "*, https://a.test",
    ],
)
def test_origins_that_could_never_match_are_refused_at_start(value: str) -> None:
    with pytest.raises(ValidationError, match="TM_CORS_ORIGINS"):
        Settings(cors_origins=value)


def test_origins_are_read_as_a_comma_separated_list() -> None:
    assert Settings().origins() == []
    assert Settings(cors_origins=f" {ALLOWED} ,, {OTHER_ALLOWED}").origins() == [ALLOWED, OTHER_ALLOWED]
    assert Settings(cors_origins="http://[::1]:8080").origins() == ["http://[::1]:8080"]


def events(api: System, path: str, **headers: str) -> list[ServerEvent]:
    """Every event of an ended task's stream (it ends after the terminal one)."""
    answer = httpx.get(f"{api.api_url}{path}", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    found = []
    for block in answer.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            found.append(ServerEvent(fields.get("id"), fields.get("event"), json.loads(fields["data"])))
    return found


def test_a_new_event_source_resumes_with_the_query_parameter(open_api: System) -> None:
    task_id = httpx.post(f"{open_api.api_url}/api/v1/tasks", json=SUBMISSION, timeout=30).json()["task_id"]
    assert httpx.post(f"{open_api.api_url}/api/v1/tasks/{task_id}/revoke", timeout=30).status_code == 200
    path = f"/api/v1/tasks/{task_id}/events"
    first, last = events(open_api, path)
    assert (first.data["state"], last.data["state"]) == ("PENDING", "REVOKED")
    resumed = events(open_api, f"{path}?last_event_id={first.id}")
    assert [(e.id, e.data["state"]) for e in resumed] == [(last.id, "REVOKED")]
    # The header wins: a reconnecting EventSource keeps its URL (here a bad one) and sends the header.
    resumed = events(open_api, f"{path}?last_event_id=abc", **{"Last-Event-ID": first.id or ""})
    assert [(e.id, e.data["state"]) for e in resumed] == [(last.id, "REVOKED")]
    bad = httpx.get(f"{open_api.api_url}{path}?last_event_id=abc", timeout=30)
    assert bad.status_code == 400 and bad.json()["detail"].startswith("Last-Event-ID: ")
