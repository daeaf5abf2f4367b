"""The task page's Revoke and Retry buttons: each form carries a CSRF token bound to the session
cookie and the task; a POST without it, with another session's, or from another origin is refused."""

from __future__ import annotations

import re

import httpx

from tests.dashboard.conftest import API_KEY as KEY
from tests.system import System

BODY = {"task_name": "image_super_resolution_pipeline", "args": ["https://example.com/in.png", "s3://bucket/o.png"]}
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def form(page: str, action: str) -> str:
    """The CSRF token of the page's `action` form (failing when the page has no such button)."""
    found = re.search(rf"<form class='action' method='post' action='[^']*/{action}'>"
                      r"<input type='hidden' name='csrf' value='([0-9a-f]{64})'>", page)  # fmt: skip
    assert found is not None, f"no {action} button"
    return found.group(1)


async def test_revoke_then_retry_from_the_task_page(api_alone: System) -> None:
    async with httpx.AsyncClient(base_url=api_alone.api_url, timeout=30) as api:
        task_id = (await api.post("/api/v1/tasks", json=BODY)).json()["task_id"]
        page = f"/dashboard/tasks/{task_id}"
        token = form((await api.get(page)).text, "revoke")
        assert (await api.post(f"{page}/revoke")).status_code == 403  # no token
        assert (await api.post(f"{page}/revoke", data={"csrf": "0" * 64})).status_code == 403
        elsewhere = {"Origin": "https://evil.example"}
        assert (await api.post(f"{page}/revoke", data={"csrf": token}, headers=elsewhere)).status_code == 403
        assert (await api.get(f"/api/v1/tasks/{task_id}")).json()["state"] == "PENDING"  # nothing happened

        revoked = await api.post(f"{page}/revoke", data={"csrf": token})
        assert revoked.status_code == 303 and revoked.headers["location"] == page
        after = (await api.get(page)).text
        assert "<span class='state s-REVOKED'>REVOKED</span>" in after and "id='revoke'" not in after
        again = await api.post(f"{page}/revoke", data={"csrf": token})  # the API's 409, in words
        assert again.status_code == 409 and "already finished" in again.text

        retried = await api.post(f"{page}/retry", data={"csrf": form(after, "retry")})
        assert retried.status_code == 303
        status = (await api.get(f"/api/v1/tasks/{task_id}")).json()
        assert (status["state"], status["run"]) == ("PENDING", 2)


async def test_the_token_is_bound_to_the_signed_in_session(secured_api: System) -> None:
    async with (
        httpx.AsyncClient(base_url=secured_api.api_url, timeout=30, headers=HTML) as one,
        httpx.AsyncClient(base_url=secured_api.api_url, timeout=30, headers=HTML) as other,
    ):
        for browser in (one, other):
            assert (await browser.post("/dashboard/signin", data={"key": KEY})).status_code == 303
        submitted = await one.post("/api/v1/tasks", json=BODY, headers={"X-API-Key": KEY})
        task_id = submitted.json()["task_id"]
        page = f"/dashboard/tasks/{task_id}"
        tokens = [form((await browser.get(page)).text, "revoke") for browser in (one, other)]
        assert tokens[0] != tokens[1]
        assert (await one.post(f"{page}/revoke", data={"csrf": tokens[1]})).status_code == 403
        anonymous = httpx.AsyncClient(base_url=secured_api.api_url, timeout=30, headers=HTML)
        async with anonymous:  # no session at all: the guard's sign-in page
            assert (await anonymous.post(f"{page}/revoke", data={"csrf": tokens[0]})).status_code == 401
        assert (await one.post(f"{page}/revoke", data={"csrf": tokens[0]})).status_code == 303
        status = (await one.get(f"/api/v1/tasks/{task_id}", headers={"X-API-Key": KEY})).json()
        assert status["state"] == "REVOKED"
