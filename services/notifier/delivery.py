"""One webhook delivery: the task's final status POSTed to its callback URL, signed and idempotent.

The request goes through the guarded client (shared/transport.py), so the address actually connected
to passes the same SSRF rules as the fetcher's (no DNS-rebinding window), and redirects are not
followed. Headers a receiver can rely on:

    Tm-Event-Id / Idempotency-Key   the terminal event's id (<task_id>.<run>.<STATE>): dedupe on it
    Tm-Timestamp                    Unix seconds when this attempt was sent
    Tm-Signature                    sha256=<hex HMAC-SHA256(TM_WEBHOOK_SECRET, "<timestamp>.<body>")>,
                                    only when TM_WEBHOOK_SECRET is set
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import httpx

from shared.errors import InputError
from shared.state import TaskStatus

H_EVENT_ID = "Tm-Event-Id"
H_TIMESTAMP = "Tm-Timestamp"
H_SIGNATURE = "Tm-Signature"
RETRIED_STATUSES = frozenset({408, 425, 429})  # besides every 5xx: the receiver may take it later


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The Tm-Signature value of `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver checks (in constant time); it should also refuse an old timestamp."""
    # bytes: compare_digest raises on a str that is not ASCII, and a forged header may hold anything
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode("utf-8", "replace"))


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    retry: bool  # worth another attempt later
    detail: str


async def deliver(client: httpx.AsyncClient, url: str, status: TaskStatus, event_id: str, secret: str) -> Outcome:
    """POST the status once; never raises for what the receiver or the network does."""
    body = status.model_dump_json().encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        H_EVENT_ID: event_id,
        "Idempotency-Key": event_id,
        H_TIMESTAMP: timestamp,
    }
    if secret:
        headers[H_SIGNATURE] = sign(secret, timestamp, body)
    try:
        # Streamed and closed unread: a receiver's answer body is of no interest, however large.
        async with client.stream("POST", url, content=body, headers=headers) as response:
            code = response.status_code
    except InputError as exc:  # refused address, a name that does not resolve: no retry makes it pass
        return Outcome(False, False, str(exc))
    except httpx.HTTPError as exc:
        return Outcome(False, True, f"{type(exc).__name__}: {exc}")
    if 200 <= code < 300:
        return Outcome(True, False, f"HTTP {code}")
    return Outcome(False, code >= 500 or code in RETRIED_STATUSES, f"HTTP {code}")
