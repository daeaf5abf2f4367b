"""The operator's view: /dashboard (HTML), /dashboard/data (the same as JSON, which the page fetches
to refresh itself) and /dashboard/metrics (Prometheus text)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.api.dashboard.overview import DashboardData, Endpoint, collect
from services.api.dashboard.page import render_page
from services.api.deps import ContextDep
from services.api.guards.auth import SESSION_COOKIE

router = APIRouter(prefix="/dashboard", tags=["monitoring"])

DOC_PAGES = (("/docs", "Swagger UI"), ("/redoc", "ReDoc"))


def _endpoints(request: Request) -> list[Endpoint]:
    """Every documented endpoint, from the app's own OpenAPI schema, plus the docs pages."""
    rows = [
        Endpoint(
            methods=" ".join(m.upper() for m in operations),
            path=path,
            summary=next((op.get("summary", "") for op in operations.values()), ""),
        )
        for path, operations in request.app.openapi()["paths"].items()
    ]
    rows += [Endpoint(methods="GET", path=path, summary=summary) for path, summary in DOC_PAGES]
    return rows


def _text(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    # response_class=Response documents nothing itself, so the errors added where the router is
    # included stay application/json (with HTMLResponse they would be documented as text/html).
    return {200: {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}}


@router.get("/metrics", response_class=Response, responses=_text("text/plain", "Prometheus text format"))
async def metrics(ctx: ContextDep) -> Response:
    """Raw Prometheus metrics for monitoring integration."""
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/data", response_model=DashboardData)
async def dashboard_data(request: Request, ctx: ContextDep) -> DashboardData:
    """Everything the dashboard shows, as JSON: workers, GPUs, queues, recent tasks, endpoints."""
    return await collect(ctx.topology, _endpoints(request))


@router.get("", response_class=Response, responses=_text("text/html", "The dashboard page"))
async def dashboard(request: Request, ctx: ContextDep) -> HTMLResponse:
    """View system metrics and status."""
    data = await collect(ctx.topology, _endpoints(request))
    signed_in = SESSION_COOKIE in request.cookies
    page = render_page(data.model_dump(mode="json"), str(request.url_for("dashboard_data").path), signed_in)
    return HTMLResponse(page)
