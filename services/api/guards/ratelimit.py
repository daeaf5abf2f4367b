"""Per-client token buckets on the /api/v1 routes: 429 with Retry-After past them.

A client is the API key it authenticated with (when keys are configured), else its peer address.
Each client has two buckets, both with TM_RATE_LIMIT_BURST tokens refilled at
TM_RATE_LIMIT_PER_S: one for writes (POST, DELETE: submissions, revocations, clean-ups) and one
for reads (GET), so polling a batch of tasks does not eat into the budget for submitting them.
Buckets live in this API process (each replica limits on its own). A bucket left alone long
enough to refill completely is the same as a new one, so it is forgotten: memory stays bounded
by the clients seen in the last burst/rate seconds.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request, status

from services.api.schemas import ErrorResponse

TOO_MANY: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorResponse,
        "description": "Rate limit or queue depth exceeded; retry after Retry-After seconds",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}},
    }
}


def too_many(detail: str, retry_after_s: float) -> HTTPException:
    seconds = max(1, math.ceil(retry_after_s))
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail, headers={"Retry-After": str(seconds)})


def peer(request: Request) -> str:
    """The client as an address: the TCP peer as uvicorn reports it. Behind a reverse proxy that is the
    proxy (all its clients share one bucket) unless uvicorn trusts the proxy's X-Forwarded-For
    (FORWARDED_ALLOW_IPS, 127.0.0.1 and ::1 by default)."""
    return f"ip:{request.client.host if request.client else 'unknown'}"


class TokenBuckets:
    """Token buckets by name; `take` answers 0 (allowed) or the seconds until a token is there, and
    spends it; `peek` answers the same without spending."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._full_after_s = burst / rate_per_s
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # name -> (tokens, at)

    def take(self, name: str) -> float:
        now = self._clock()
        self._forget_full(now)
        tokens = self._tokens(name, now)
        self._buckets.pop(name, None)  # put back last below: the most recently used
        if tokens >= 1:
            self._buckets[name] = (tokens - 1, now)
            return 0.0
        self._buckets[name] = (tokens, now)
        return (1 - tokens) / self.rate_per_s

    def peek(self, name: str) -> float:
        tokens = self._tokens(name, self._clock())  # stores nothing: looking costs no memory
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate_per_s

    def _tokens(self, name: str, now: float) -> float:
        tokens, at = self._buckets.get(name, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate_per_s)

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_full(self, now: float) -> None:
        # Least recently used first: stop at the first bucket that may still be short of tokens.
        while self._buckets:
            name, (_, at) = next(iter(self._buckets.items()))
            if now - at < self._full_after_s:
                return
            del self._buckets[name]


class RateLimiter:
    """The dependency that spends one token of the client's read or write bucket per request."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.buckets = TokenBuckets(rate_per_s, burst)

    async def __call__(self, request: Request) -> None:
        client = getattr(request.state, "client", None) or peer(request)  # a key's name, set by the guard
        kind = "read" if request.method in ("GET", "HEAD") else "write"
        wait_s = self.buckets.take(f"{client}/{kind}")
        if wait_s > 0:
            limits = f"{self.buckets.rate_per_s:g}/s, burst {self.buckets.burst}"
            raise too_many(f"rate limit exceeded for {kind} requests ({limits})", wait_s)
