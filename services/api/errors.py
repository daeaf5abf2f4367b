"""How the API answers what goes wrong, in one place: every error is JSON `{"detail": "..."}`.

- invalid requests are 400 (never 422) with a detail naming the field; the OpenAPI document drops
  FastAPI's default 422 responses accordingly;
- NATS unreachable past the store's own retries is 503, not 500;
- 405 lists in Allow every method of the path (Starlette names only those of the first route that
  matches: GET /api/v1/tasks/{id} and its DELETE are separate routes), and HEAD with GET (head.py).
"""

from __future__ import annotations

import re
from typing import Any

import nats.errors
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


def describe(errors: list) -> str:
    """Pydantic's errors as one line, each `location: message` (`query.limit: Input should be ...`)."""
    parts = []
    for error in errors:
        location = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


async def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    """The reference answers invalid parameters with 400 and a readable `detail` naming the field."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": describe(list(exc.errors()))}, status_code=400)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    structlog.get_logger().warning("nats_unavailable", path=request.url.path, error=repr(exc))
    return JSONResponse({"detail": "task store unavailable, retry later"}, status_code=503)


def _path_pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)))


async def _method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    path = request.scope["path"]
    documented = {
        method.upper()
        for template, operations in request.app.openapi()["paths"].items()
        if _path_pattern(template).fullmatch(path)
        for method in operations
    }
    allowed = sorted(documented | {"HEAD"} if "GET" in documented else documented)
    headers = {"Allow": ", ".join(allowed)} if allowed else dict(exc.headers or {})  # undocumented: Starlette's
    return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers=headers)


def _openapi_without_422(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)  # builds and caches app.openapi_schema
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
    assert app.openapi_schema is not None
    return app.openapi_schema


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(nats.errors.Error, _unavailable)
    app.add_exception_handler(405, _method_not_allowed)
    app.openapi = lambda: _openapi_without_422(app)  # type: ignore[method-assign]
