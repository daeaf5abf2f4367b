"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>` on every guarded route.

The guard is a dependency that `create_app` puts on the /api/v1 and /dashboard routers when keys
are configured (TM_API_KEYS / TM_API_KEYS_FILE); without keys nothing is guarded and the OpenAPI
document declares no security. Keys are compared as SHA-256 digests with `hmac.compare_digest`
against every configured key, so neither the time taken nor an early exit tells which key (or
what length) came close. A key is never logged: the matched key is known afterwards only by its
position in the list (`request.state.client`, which the rate limiter buckets on).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from services.api.schemas import ErrorResponse

bearer_scheme = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>` with a key of TM_API_KEYS")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <key>`, the same keys")

CHALLENGE = {"WWW-Authenticate": "Bearer"}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorResponse,
        "description": "Missing or wrong API key",
        "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    }
}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeyGuard:
    """The dependency that lets a request through only with one of the configured keys."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(key) for key in keys)
        if not self._digests:
            raise ValueError("ApiKeyGuard needs at least one key")

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
