"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>` on every guarded route.

The guard is a dependency that `create_app` puts on the /api/v1 and /dashboard routers when keys
are configured (TM_API_KEYS / TM_API_KEYS_FILE); without keys nothing is guarded and the OpenAPI
document declares no security. Keys are compared as SHA-256 digests with `hmac.compare_digest`
against every configured key, so neither the time taken nor an early exit tells which key (or
what length) came close. A key is never logged: the matched key is known afterwards only by its
position in the list (`request.state.client`, which the rate limiter buckets on).

Guessing is throttled per client address (`ratelimit.peer`): every wrong key, in a header or on the
sign-in form, spends a token of the address's budget (TM_AUTH_FAILURE_BURST, refilled at
TM_AUTH_FAILURE_PER_S; one budget per API process, shared by its guards). While it is spent, every
request of that address that presents a key is a 429 before the key is compared, so a right guess
cannot be told from a wrong one. A missing key is no guess and spends nothing.

Browsers cannot add a header to a page load, so the dashboard's guard also takes a session cookie
(`services/api/dashboard/signin.py` issues it for a valid key): `<key index>.<expiry>.<session id>.<HMAC>`
signed with the key's own digest, so every API replica verifies it without shared state, it ends at its
expiry, and removing the key (and restarting) ends its sessions. It opens the /dashboard routes only.
Signing out writes the random session id to the TM_SESSIONS KV bucket (kept one session lifetime, so
longer than any cookie it names), and the guard reads that bucket on every request with a valid
cookie: a direct get of one key, not a watched local copy, so a sign-out holds on every replica at
once, no replica replays the bucket at start, and the few dashboard requests (a page refresh every
few seconds) cost one sub-millisecond round trip each.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from typing import Annotated, Any, NamedTuple

import structlog
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from services.api.deps import get_context
from services.api.guards.ratelimit import TokenBuckets, peer, too_many
from services.api.schemas import ErrorResponse

bearer_scheme = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>` with a key of TM_API_KEYS")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <key>`, the same keys")

CHALLENGE = {"WWW-Authenticate": "Bearer"}
SESSION_COOKIE = "tm_dashboard"
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorResponse,
        "description": "Missing or wrong API key",
        "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    }
}


log = structlog.get_logger()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Session(NamedTuple):
    key: int  # the position of the key it was issued for
    id: str  # random: what signing out revokes


async def revoke(sessions: KeyValue, session: Session) -> None:
    """Sign a session out on every replica (the bucket's TTL drops the entry after the cookie expired)."""
    await sessions.put(session.id, b"signed out")


async def revoked(sessions: KeyValue, session: Session) -> bool:
    try:
        await sessions.get(session.id)
    except KeyNotFoundError:
        return False
    return True


class SignInRequired(HTTPException):
    """A browser asked for the dashboard without a key or session: answered with the sign-in page."""

    def __init__(self) -> None:
        super().__init__(status.HTTP_401_UNAUTHORIZED, "sign in with an API key", headers=CHALLENGE)


class ApiKeyGuard:
    """The dependency that lets a request through only with one of the configured keys (or, where
    `session_s` is set, a session cookie issued for one); wrong keys spend their address's `failures`."""

    def __init__(self, keys: Iterable[str], failures: TokenBuckets, session_s: float = 0) -> None:
        self._digests = tuple(_digest(key) for key in keys)
        if not self._digests:
            raise ValueError("ApiKeyGuard needs at least one key")
        self.failures = failures
        self.session_s = session_s

    def _signature(self, index: int, expires: int, session_id: str) -> str:
        message = f"tm-dashboard.{index}.{expires}.{session_id}".encode("utf-8", "replace")
        return hmac.new(self._digests[index], message, hashlib.sha256).hexdigest()

    def issue_session(self, index: int, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.session_s)
        session_id = secrets.token_hex(16)
        return f"{index}.{expires}.{session_id}.{self._signature(index, expires, session_id)}"

    def session(self, token: str | None, now: float | None = None) -> Session | None:
        """The session a valid, unexpired cookie names (signed out or not: see `revoked`), or None."""
        if not token or not self.session_s:
            return None
        try:
            index_text, expires_text, session_id, signature = token.split(".")
            index, expires = int(index_text), int(expires_text)
        except ValueError:
            return None
        if not 0 <= index < len(self._digests) or expires < (time.time() if now is None else now):
            return None
        expected = self._signature(index, expires, session_id).encode()
        # bytes: compare_digest refuses a str that is not ASCII, and a forged cookie may hold anything
        if not hmac.compare_digest(signature.encode("utf-8", "replace"), expected):
            return None
        return Session(index, session_id)

    def authenticate(self, request: Request, presented: str) -> int | None:
        """The position of the presented key, or None, which spends a token of the client's failure
        budget. While that budget is spent: 429, and the key is not compared at all."""
        client = peer(request)
        wait_s = self.failures.peek(client)
        if wait_s > 0:
            raise too_many("too many failed authentications from this address", wait_s)
        index = self.match(presented)
        if index is None:
            self.failures.take(client)
            if self.failures.peek(client) > 0:  # the failure that spent the last token, not every 429 after it
                log.warning("auth_failures_throttled", client=client, burst=self.failures.burst)
        return index

    def match(self, presented: str) -> int | None:
        """The position of the presented key among the configured ones, or None."""
        digest = _digest(presented)
        found = None
        for index, expected in enumerate(self._digests):  # every key, whatever matched before
            if hmac.compare_digest(digest, expected):
                found = index
        return found

    async def __call__(
        self,
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
        api_key: Annotated[str | None, Depends(api_key_scheme)],
    ) -> None:
        presented = bearer.credentials if bearer is not None else api_key
        if not presented and (session := await self._signed_in(request)) is not None:
            request.state.client = f"key#{session.key}"
            return
        if not presented and self.session_s and "text/html" in request.headers.get("accept", ""):
            raise SignInRequired()
        if not presented:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing API key: send Authorization: Bearer <key> or X-API-Key: <key>",
                headers=CHALLENGE,
            )
        index = self.authenticate(request, presented)
        if index is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", headers=CHALLENGE)
        request.state.client = f"key#{index}"

    async def _signed_in(self, request: Request) -> Session | None:
        session = self.session(request.cookies.get(SESSION_COOKIE))
        if session is None or await revoked((await get_context(request)).topology.sessions, session):
            return None
        return session
