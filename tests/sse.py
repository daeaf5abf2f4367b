"""Reading a Server-Sent Events response (GET /api/v1/tasks/{id}/events) in tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class ServerEvent:
    id: str | None
    event: str | None
    data: dict[str, Any]


async def server_events(response: httpx.Response) -> AsyncIterator[ServerEvent]:
    """The events of a streamed response, as they arrive (comment lines are skipped)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if "data" in fields:
                yield ServerEvent(fields.get("id"), fields.get("event"), json.loads(fields["data"]))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def collect(response: httpx.Response) -> list[ServerEvent]:
    """Every event until the server ends the stream (bound the wait around the call)."""
    return [event async for event in server_events(response)]
