"""One webhook delivery: the task's final status POSTed to its callback URL, signed and idempotent.

The request goes through the guarded client (shared/egress/transport.py), so the address actually connected
to passes the same SSRF rules as the fetcher's (no DNS-rebinding window), and redirects are not
followed. One deadline (TM_WEBHOOK_TIMEOUT_S) bounds the whole delivery, and the answer's body is
never read. Headers a receiver can rely on:

    Tm-Event-Id / Idempotency-Key   the terminal event's id (<task_id>.<run>.<STATE>): dedupe on it
    Tm-Timestamp                    Unix seconds when this attempt was sent
    Tm-Signature                    sha256=<hex HMAC-SHA256(TM_WEBHOOK_SECRET, "<timestamp>.<body>")>,
                                    only when TM_WEBHOOK_SECRET is set
    traceparent / tracestate        the task's trace (W3C), only when tracing is on (shared/tracing.py)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass

import httpx
import structlog

from shared import tracing
from shared.runtime.errors import InputError
from shared.taskstate.status import TaskStatus

H_EVENT_ID = "Tm-Event-Id"
H_TIMESTAMP = "Tm-Timestamp"
H_SIGNATURE = "Tm-Signature"
RETRIED_STATUSES = frozenset({408, 425, 429})  # besides every 5xx: the receiver may take it later
log = structlog.get_logger()


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


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    status: TaskStatus,
    event_id: str,
    secret: str,
    *,
    deadline_s: float | None = None,
) -> Outcome:
    """POST the status once, within `deadline_s` in all; never raises for what the URL, the receiver or
    the network does (an unexpected error is logged and retried, so it ends as webhook_failed at worst)."""
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
    if tracing.ENABLED:
        tracing.inject(headers)  # traceparent: a receiver that traces continues the task's trace
    deadline = asyncio.timeout(deadline_s)
    try:
        # Streamed and closed unread: a receiver's answer body is of no interest, however large.
        async with deadline, client.stream("POST", url, content=body, headers=headers) as response:
            code = response.status_code
    except InputError as exc:  # refused address, a name that does not resolve: no retry makes it pass
        return Outcome(False, False, str(exc))
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:  # nor for a URL httpx cannot send to
        return Outcome(False, False, f"invalid callback URL ({exc})")
    except httpx.HTTPError as exc:
        return Outcome(False, True, f"{type(exc).__name__}: {exc}")
    except TimeoutError as exc:
        if deadline.expired():
            return Outcome(False, True, f"no answer within the {deadline_s:g} s limit (TM_WEBHOOK_TIMEOUT_S)")
        return _unexpected(exc)
    except Exception as exc:
        return _unexpected(exc)
    if 200 <= code < 300:
        return Outcome(True, False, f"HTTP {code}")
    return Outcome(False, code >= 500 or code in RETRIED_STATUSES, f"HTTP {code}")


def _unexpected(exc: Exception) -> Outcome:
    """An error no rule above knows: likely a bug, so kept with its traceback, and retried like one."""
    log.warning("webhook_error", error=repr(exc), exc_info=exc)
    return Outcome(False, True, f"{type(exc).__name__}: {exc}")
