"""CORS for browser pages on other origins (TM_CORS_ORIGINS), on the /api/v1 routes only.

Starlette's CORSMiddleware does the work (preflights answered before any guard, the allow-list, `Vary:
Origin`); this wrapper confines it to /api/v1 (the REST routes and the SSE events stream). The
dashboard stays same-origin: its session cookie and CSRF checks assume no other origin is ever let in
(docs/security.md). No credentials mode: the API authenticates with headers (`Authorization`,
`X-API-Key`), which a page sends explicitly, and no cookie opens /api/v1, so there is nothing for
`credentials: "include"` to carry and `Access-Control-Allow-Credentials` is never sent. That is also
what keeps `*` sound: any page may call the API, but only with a key it was given.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

API_PREFIX = "/api/v1"
METHODS = ("GET", "HEAD", "POST", "DELETE")
# What a page may send beyond the CORS-safelisted headers: the keys, JSON bodies, idempotent
# submissions, and the resume point an EventSource sends by itself when it reconnects.
REQUEST_HEADERS = ("Authorization", "X-API-Key", "Content-Type", "Idempotency-Key", "Last-Event-ID")
# What a page may read beyond the safelisted response headers: when to retry (429), which scheme (401).
RESPONSE_HEADERS = ("Retry-After", "WWW-Authenticate")
PREFLIGHT_MAX_AGE_S = 600


class ApiCors:
    """CORS headers on /api/v1 for `origins` (exact, or ["*"]); every other path passes untouched."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=METHODS,
            allow_headers=REQUEST_HEADERS,
            expose_headers=RESPONSE_HEADERS,
            allow_credentials=False,
            max_age=PREFLIGHT_MAX_AGE_S,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
