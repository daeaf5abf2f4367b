"""Liveness of the API and its connection to NATS: /health."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.api.deps import ContextDep
from services.api.schemas import HealthResponse
from shared.runtime.presence import VERSION

router = APIRouter(tags=["monitoring"])

SERVICE = "task-manager-api"


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(ctx: ContextDep) -> JSONResponse:
    """Check API health status (503 when NATS is unreachable)."""
    nc = ctx.topology.nc
    try:
        if not nc.is_connected:
            raise ConnectionError("not connected")
        await nc.flush(timeout=1)
    except Exception as exc:
        body = HealthResponse(status="unhealthy", service=SERVICE, version=VERSION, detail=f"NATS: {exc}")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    body = HealthResponse(status="healthy", service=SERVICE, version=VERSION)
    return JSONResponse(body.model_dump(exclude_none=True))
