"""Request bodies over TM_MAX_BODY_BYTES are 413, refused while reading: a declared length before
any body byte, a chunked body as soon as it goes past the limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.api.conftest import SUBMISSION, api_only
from tests.system import System

LIMIT = 4096


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with api_only(tmp_path_factory.mktemp("limited"), TM_MAX_BODY_BYTES=str(LIMIT)) as system:
        yield system


@pytest.fixture
async def api(limited: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=limited.api_url, timeout=30) as client:
        yield client


def _padded(size: int) -> bytes:
    """A valid submission of exactly `size` bytes (JSON allows trailing whitespace)."""
    body = json.dumps(SUBMISSION).encode()
    return body + b" " * (size - len(body))


async def _raw(system: System, head: str, body_parts: list[bytes]) -> tuple[int, dict]:
    """Send a request head and some body bytes on a raw connection, never finishing the body, and
    read the answer: it can only come from a server that stopped reading on its own."""
    url = urlsplit(system.api_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head.encode())
        for part in body_parts:
            writer.write(part)
        await writer.drain()
        async with asyncio.timeout(10):
            status_line = await reader.readline()
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers["content-length"]))
        assert headers["content-type"] == "application/json"
        return int(status_line.split()[1]), json.loads(body)
    finally:
        writer.close()


def _head(extra: str) -> str:
    return f"POST /api/v1/tasks HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n{extra}\r\n"


async def test_a_declared_length_over_the_limit_is_refused_before_the_body(limited: System) -> None:
    status, body = await _raw(limited, _head("Content-Length: 1000000000\r\n"), [])
    assert status == 413
    assert str(LIMIT) in body["detail"]


async def test_a_chunked_body_is_cut_off_past_the_limit(limited: System) -> None:
    chunk = b"x" * 1024
    chunks = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(LIMIT // len(chunk) + 1)]
    status, body = await _raw(limited, _head("Transfer-Encoding: chunked\r\n"), chunks)  # no last chunk
    assert status == 413
    assert str(LIMIT) in body["detail"]


async def test_an_oversized_json_body_is_413(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/tasks", json={**SUBMISSION, "kwargs": {"model": "x" * LIMIT}})
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body larger than {LIMIT} bytes"}


async def test_bodies_up_to_the_limit_pass_whole(api: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "application/json"}
    exact = await api.post("/api/v1/tasks", content=_padded(LIMIT), headers=headers)
    assert exact.status_code == 202, exact.text
    assert (await api.post("/api/v1/tasks", content=_padded(LIMIT + 1), headers=headers)).status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # chunked: the body arrives in several pieces
        body = _padded(LIMIT)
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    chunked = await api.post("/api/v1/tasks", content=chunks(), headers=headers)
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert chunked.status_code == 202, chunked.text
    assert (await api.get(f"/api/v1/tasks/{chunked.json()['task_id']}")).status_code == 200
