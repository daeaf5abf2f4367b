"""Browsers sign in to the dashboard once when API keys are on: a form takes a key and sets a
signed, expiring, HttpOnly session cookie that opens the /dashboard routes and nothing else."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.api.auth import SESSION_COOKIE, ApiKeyGuard
from tests.api.conftest import KEY_1, KEY_2, WRONG, api_only
from tests.system import System

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture
async def browser(secured: System) -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps cookies, as a browser does, and follows no redirect by itself."""
    async with httpx.AsyncClient(base_url=secured.api_url, timeout=30, headers=HTML) as client:
        yield client


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/dashboard/signin", data={"key": key})


async def test_a_browser_without_a_session_gets_the_sign_in_form(browser: httpx.AsyncClient) -> None:
    for path in ("/dashboard", "/dashboard/data", "/dashboard/metrics"):
        page = await browser.get(path)
        assert page.status_code == 401 and page.headers["content-type"].startswith("text/html"), path
        assert 'action="/dashboard/signin"' in page.text and 'type="password"' in page.text
        assert page.headers["www-authenticate"] == "Bearer"
    machine = await browser.get("/dashboard/data", headers={"Accept": "application/json"})
    assert machine.status_code == 401 and machine.json()["detail"].startswith("missing API key")


async def test_a_wrong_key_is_refused_on_the_form_and_sets_nothing(browser: httpx.AsyncClient) -> None:
    refused = await sign_in(browser, WRONG)
    assert refused.status_code == 200 and "not a valid API key" in refused.text  # the form again
    assert "set-cookie" not in refused.headers
    assert (await browser.get("/dashboard")).status_code == 401


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"", {}, 415),
        (b'{"key": "x"}', {"Content-Type": "application/json"}, 415),
        (b"other=1", {"Content-Type": "application/x-www-form-urlencoded"}, 400),
        (b"key=a&key=b", {"Content-Type": "application/x-www-form-urlencoded"}, 400),
    ],
    ids=["no body", "json", "no key field", "two keys"],
)
async def test_a_malformed_sign_in_is_a_client_error_naming_the_problem(
    browser: httpx.AsyncClient, content: bytes, headers: dict[str, str], status: int
) -> None:
    response = await browser.post("/dashboard/signin", content=content, headers=headers)
    assert response.status_code == status and response.json()["detail"]
    assert "set-cookie" not in response.headers


async def test_a_valid_key_signs_the_browser_in_to_every_dashboard_route(browser: httpx.AsyncClient) -> None:
    signed_in = await sign_in(browser, KEY_2)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard"
    cookie = signed_in.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/dashboard", "Max-Age=43200"):
        assert attribute.lower() in cookie.lower(), cookie
    assert KEY_2 not in cookie and "Secure" not in cookie  # plain http here; the key itself never travels back
    page = await browser.get("/dashboard")
    assert page.status_code == 200 and "Worker pool" in page.text and "Sign out" in page.text
    assert (await browser.get("/dashboard/data", headers={"Accept": "application/json"})).json()["workers"] is not None
    assert (await browser.get("/dashboard/metrics")).status_code == 200

    signed_out = await browser.post("/dashboard/signout")
    assert signed_out.status_code == 303 and "max-age=0" in signed_out.headers["set-cookie"].lower()
    assert (await browser.get("/dashboard")).status_code == 401


async def test_the_session_opens_nothing_but_the_dashboard(browser: httpx.AsyncClient, secured: System) -> None:
    token = (await sign_in(browser, KEY_1)).cookies[SESSION_COOKIE]
    async with httpx.AsyncClient(base_url=secured.api_url, timeout=30, cookies={SESSION_COOKIE: token}) as client:
        assert (await client.get(f"/api/v1/tasks/{uuid.uuid4()}")).status_code == 401
        assert (await client.get("/dashboard/data")).status_code == 200


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),  # signature changed
        lambda t: "1" + t[1:],  # issued for key 0, claimed for key 1
        lambda t: t.split(".")[0] + ".99999999999." + t.split(".")[2],  # expiry pushed back
        lambda t: t.rsplit(".", 1)[0] + ".\u00e9\u00e9",  # not ASCII: compared as bytes, not a 500
        lambda t: "garbage",
        lambda t: "",
    ],
    ids=["signature", "other key", "expiry", "not ascii", "garbage", "empty"],
)
async def test_a_forged_session_is_refused(secured: System, forge) -> None:
    async with httpx.AsyncClient(base_url=secured.api_url, timeout=30, headers=HTML) as client:
        token = (await sign_in(client, KEY_1)).cookies[SESSION_COOKIE]
    raw_cookie = f"{SESSION_COOKIE}={forge(token)}".encode()  # as a client may send it, bytes and all
    async with httpx.AsyncClient(base_url=secured.api_url, timeout=30) as client:
        assert (await client.get("/dashboard/data", headers={"Cookie": raw_cookie})).status_code == 401


def test_a_session_ends_at_its_expiry_and_with_its_key() -> None:
    guard = ApiKeyGuard([KEY_1, KEY_2], session_s=60)
    token = guard.issue_session(1, now=1000)
    assert guard.session_key(token, now=1059) == 1
    assert guard.session_key(token, now=1061) is None
    assert ApiKeyGuard([KEY_2], session_s=60).session_key(token, now=1000) is None  # key list changed
    assert ApiKeyGuard([KEY_1, KEY_2], session_s=0).session_key(token, now=1000) is None  # sessions off


def test_without_sessions_the_dashboard_needs_a_header_key(tmp_path) -> None:
    with api_only(tmp_path, TM_API_KEYS=KEY_1, TM_DASHBOARD_SESSION_S="0") as system:
        page = httpx.get(f"{system.api_url}/dashboard", headers=HTML, timeout=30)
        assert page.status_code == 401 and page.headers["content-type"] == "application/json"
        assert httpx.post(f"{system.api_url}/dashboard/signin", data={"key": KEY_1}, timeout=30).status_code == 404


def test_guessing_keys_on_the_form_is_throttled(tmp_path) -> None:
    with api_only(tmp_path, TM_API_KEYS=KEY_1, TM_RATE_LIMIT_BURST="3", TM_RATE_LIMIT_PER_S="0.01") as system:
        answers = [
            httpx.post(f"{system.api_url}/dashboard/signin", data={"key": f"guess-{n}"}, timeout=30) for n in range(4)
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert int(answers[-1].headers["retry-after"]) >= 1
