"""Browsers sign in to the dashboard once when API keys are on: a form takes a key and sets a
signed, expiring, HttpOnly session cookie that opens the /dashboard routes and nothing else."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.api.guards.auth import SESSION_COOKIE, ApiKeyGuard
from services.api.guards.ratelimit import TokenBuckets
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
    failures = TokenBuckets(1, 1)
    guard = ApiKeyGuard([KEY_1, KEY_2], failures, session_s=60)
    token = guard.issue_session(1, now=1000)
    session = guard.session(token, now=1059)
    assert session is not None and session.key == 1
    assert guard.session(token, now=1061) is None
    assert ApiKeyGuard([KEY_2], failures, session_s=60).session(token, now=1000) is None  # key list changed
    assert ApiKeyGuard([KEY_1, KEY_2], failures, session_s=0).session(token, now=1000) is None  # sessions off
    other = guard.session(guard.issue_session(1, now=1000), now=1000)
    assert other is not None and other.id != session.id  # each sign-in is a session of its own


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


async def test_signing_out_revokes_the_session_on_every_replica(secured: System, tmp_path) -> None:
    """The cookie a browser held is refused after sign-out even if it kept a copy (stolen, or a tab
    that did not see the deletion), and by another API process on the same NATS too."""
    other = System(secured.nats_url, tmp_path / "second", {"TM_API_KEYS": secured.env["TM_API_KEYS"]})
    await other.start("api")
    try:
        async with httpx.AsyncClient(base_url=secured.api_url, timeout=30, headers=HTML) as browser:
            token = (await sign_in(browser, KEY_1)).cookies[SESSION_COOKIE]
            kept = {"Cookie": f"{SESSION_COOKIE}={token}"}
            for api_url in (secured.api_url, other.api_url):
                assert (await browser.get(f"{api_url}/dashboard/data", headers=kept)).status_code == 200
            other_session = (await sign_in(browser, KEY_1)).cookies[SESSION_COOKIE]

            signed_out = await browser.post("/dashboard/signout", headers=kept)
            assert signed_out.status_code == 303
            for api_url in (secured.api_url, other.api_url):
                assert (await browser.get(f"{api_url}/dashboard/data", headers=kept)).status_code == 401
                # Signing out ends that session only, not the key's other sessions.
                others = {"Cookie": f"{SESSION_COOKIE}={other_session}"}
                assert (await browser.get(f"{api_url}/dashboard/data", headers=others)).status_code == 200
    finally:
        other.stop()


CROSS_ORIGIN = {
    "another origin": {"Origin": "https://evil.example"},
    "another port": {"Origin": "http://127.0.0.1:1"},
    "opaque origin": {"Origin": "null"},
    "cross-site fetch": {"Sec-Fetch-Site": "cross-site"},
    "same-site fetch": {"Sec-Fetch-Site": "same-site"},
}


@pytest.mark.parametrize("headers", CROSS_ORIGIN.values(), ids=CROSS_ORIGIN.keys())
async def test_a_form_posted_from_another_origin_is_refused(
    browser: httpx.AsyncClient, secured: System, headers: dict[str, str]
) -> None:
    """Login CSRF: another site's page must not sign the browser in with the attacker's key, nor out."""
    refused = await browser.post("/dashboard/signin", data={"key": KEY_1}, headers=headers)
    assert refused.status_code == 403 and "set-cookie" not in refused.headers
    field = next(iter(headers))
    assert refused.json()["detail"].startswith(f"{field}: "), refused.text

    token = (await sign_in(browser, KEY_1)).cookies[SESSION_COOKIE]
    refused = await browser.post("/dashboard/signout", headers=headers)
    assert refused.status_code == 403 and refused.json()["detail"].startswith(f"{field}: ")
    kept = {"Cookie": f"{SESSION_COOKIE}={token}"}
    assert (await browser.get("/dashboard/data", headers=kept)).status_code == 200  # still signed in


async def test_a_form_posted_from_the_api_own_origin_passes(browser: httpx.AsyncClient, secured: System) -> None:
    own = {"Origin": secured.api_url, "Sec-Fetch-Site": "same-origin"}
    assert (await browser.post("/dashboard/signin", data={"key": KEY_1}, headers=own)).status_code == 303
    assert (await browser.post("/dashboard/signout", headers=own)).status_code == 303
    typed_in = {"Sec-Fetch-Site": "none"}  # no page sent it
    assert (await browser.post("/dashboard/signin", data={"key": KEY_1}, headers=typed_in)).status_code == 303
    # The origin is the request's as the API sees it (its Host header), its scheme's default port implied.
    behind_a_name = {"Host": "tm.example:80", "Origin": "http://TM.example"}
    assert (await browser.post("/dashboard/signin", data={"key": KEY_1}, headers=behind_a_name)).status_code == 303
