"""Guessing keys is throttled per client address: past TM_AUTH_FAILURE_BURST wrong keys (refilled at
TM_AUTH_FAILURE_PER_S), every request of that address that presents a key is a 429 before the key is
compared, a right key included; other addresses are not affected. Over real HTTP, one API process."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from tests.api.conftest import KEY_1, WRONG
from tests.system import System

BURST, PER_S = 20, 0.2
GUESSES, IN_FLIGHT = 10_000, 32
THROTTLED = {"TM_API_KEYS": KEY_1, "TM_AUTH_FAILURE_BURST": str(BURST), "TM_AUTH_FAILURE_PER_S": str(PER_S)}
TASK_PATH = f"/api/v1/tasks/{uuid.uuid4()}"


def _other_address(api_url: str) -> httpx.AsyncClient:
    """A client whose connections come from 127.0.0.2: another peer address for the API on 127.0.0.1."""
    return httpx.AsyncClient(
        base_url=api_url, timeout=30, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    )


def _assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["retry-after"]) <= int(1 / PER_S) + 1
    assert "failed authentications" in response.json()["detail"]


async def _guess(api: httpx.AsyncClient, count: int) -> tuple[dict[int, int], float]:
    """`count` wrong keys, alternately as Bearer and X-API-Key, `IN_FLIGHT` at a time: (status -> count, seconds)."""
    statuses: dict[int, int] = {}
    turns = iter(range(count))
    began = time.monotonic()

    async def worker() -> None:
        for n in turns:
            headers = {"Authorization": f"Bearer {WRONG}{n}"} if n % 2 else {"X-API-Key": f"{WRONG}{n}"}
            status = (await api.get(TASK_PATH, headers=headers)).status_code
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return statuses, time.monotonic() - began


@pytest.mark.system_env(**THROTTLED)
async def test_ten_thousand_wrong_keys_get_little_more_than_the_burst(api_system: System) -> None:
    limits = httpx.Limits(max_connections=IN_FLIGHT)
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30, limits=limits) as api:
        statuses, elapsed_s = await _guess(api, GUESSES)
        print(f"\n{GUESSES} wrong keys in {elapsed_s:.1f} s: {statuses}")  # the figures, with -s
        assert set(statuses) == {401, 429}, statuses
        assert BURST <= statuses[401] <= BURST + int(elapsed_s * PER_S) + 1, (statuses, elapsed_s)

        # Throttled: even the right key is refused unread, in a header or on the sign-in form ...
        _assert_throttled(await api.get(TASK_PATH, headers={"Authorization": f"Bearer {KEY_1}"}))
        _assert_throttled(await api.post("/dashboard/signin", data={"key": KEY_1}))
        # ... while a request that presents no key is no guess: it is told what is missing, as always.
        assert (await api.get(TASK_PATH)).status_code == 401

    async with _other_address(api_system.api_url) as elsewhere:  # another client has a budget of its own
        assert (await elsewhere.get(TASK_PATH, headers={"X-API-Key": KEY_1})).status_code == 404
        assert (await elsewhere.get(TASK_PATH, headers={"X-API-Key": WRONG})).status_code == 401


@pytest.mark.system_env(**THROTTLED)
async def test_wrong_keys_on_the_sign_in_form_spend_the_same_budget(api_system: System) -> None:
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api:
        answers = [(await api.post("/dashboard/signin", data={"key": f"{WRONG}{n}"})).status_code for n in range(15)]
        assert answers == [200] * 15  # the form again, saying the key is wrong
        guesses = [
            (await api.get("/dashboard/metrics", headers={"X-API-Key": f"{WRONG}{n}"})).status_code for n in range(10)
        ]
        assert guesses.count(401) in (BURST - 15, BURST - 15 + 1) and set(guesses) == {401, 429}, guesses
        _assert_throttled(await api.post("/dashboard/signin", data={"key": KEY_1}))
        _assert_throttled(await api.get("/dashboard/metrics", headers={"X-API-Key": KEY_1}))


@pytest.mark.system_env(**THROTTLED)
async def test_right_keys_and_missing_keys_spend_nothing(api_system: System) -> None:
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api:
        for _ in range(2 * BURST):
            assert (await api.get(TASK_PATH, headers={"X-API-Key": KEY_1})).status_code == 404
            assert (await api.get(TASK_PATH)).status_code == 401
        assert (await api.get(TASK_PATH, headers={"X-API-Key": WRONG})).status_code == 401  # the budget is whole
