"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>` on every guarded route.

The guard is a dependency that `create_app` puts on the /api/v1 and /dashboard routers when keys
are configured (TM_API_KEYS / TM_API_KEYS_FILE); without keys nothing is guarded and the OpenAPI
document declares no security. Keys are compared as SHA-256 digests with `hmac.compare_digest`
against every configured key, so neither the time taken nor an early exit tells which key (or
what length) came close. A key is never logged: the matched key is known afterwards only by its
position in the list (`request.state.client`, which the rate limiter buckets on).

Browsers cannot add a header to a page load, so the dashboard's guard also takes a session cookie
(`services/api/routes/signin.py` issues it for a valid key): `<key index>.<expiry>.<HMAC>` signed with the
key's own digest, so every API replica verifies it without shared state, it ends at its expiry, and
removing the key (and restarting) ends its sessions. It opens the /dashboard routes only.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

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


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class SignInRequired(HTTPException):
    """A browser asked for the dashboard without a key or session: answered with the sign-in page."""

    def __init__(self) -> None:
        super().__init__(status.HTTP_401_UNAUTHORIZED, "sign in with an API key", headers=CHALLENGE)


class ApiKeyGuard:
    """The dependency that lets a request through only with one of the configured keys (or, where
    `session_s` is set, a session cookie issued for one)."""

    def __init__(self, keys: Iterable[str], session_s: float = 0) -> None:
        self._digests = tuple(_digest(key) for key in keys)
        if not self._digests:
            raise ValueError("ApiKeyGuard needs at least one key")
        self.session_s = session_s

    def _signature(self, index: int, expires: int) -> str:
        return hmac.new(self._digests[index], f"tm-dashboard.{index}.{expires}".encode(), hashlib.sha256).hexdigest()

    def issue_session(self, index: int, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.session_s)
        return f"{index}.{expires}.{self._signature(index, expires)}"

    def session_key(self, token: str | None, now: float | None = None) -> int | None:
        """The position of the key a valid, unexpired session was issued for, or None."""
        if not token or not self.session_s:
            return None
        try:
            index_text, expires_text, signature = token.split(".")
            index, expires = int(index_text), int(expires_text)
        except ValueError:
            return None
        if not 0 <= index < len(self._digests) or expires < (time.time() if now is None else now):
            return None
        expected = self._signature(index, expires).encode()
        # bytes: compare_digest refuses a str that is not ASCII, and a forged cookie may hold anything
        return index if hmac.compare_digest(signature.encode("utf-8", "replace"), expected) else None

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
        if not presented and (session := self.session_key(request.cookies.get(SESSION_COOKIE))) is not None:
            request.state.client = f"key#{session}"
            return
        if not presented and self.session_s and "text/html" in request.headers.get("accept", ""):
            raise SignInRequired()
        if not presented:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing API key: send Authorization: Bearer <key> or X-API-Key: <key>",
                headers=CHALLENGE,
            )
        index = self.match(presented)
        if index is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", headers=CHALLENGE)
        request.state.client = f"key#{index}"
