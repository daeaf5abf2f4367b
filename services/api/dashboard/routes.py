"""The operator's view: /dashboard (HTML), /dashboard/data (the same as JSON, which the page fetches
to refresh itself), /dashboard/history (the last hour, charted by /dashboard/charts), /dashboard/tasks/{id}
(one task's page) and /dashboard/metrics (Prometheus text)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.api.dashboard.actions import csrf_token, done, refused
from services.api.dashboard.charts import render_charts
from services.api.dashboard.history import HistoryData
from services.api.dashboard.overview import DashboardData, Endpoint, collect
from services.api.dashboard.page import render_page
from services.api.dashboard.taskpage import render_missing_task, render_search, render_task_page, search_query
from services.api.deps import ApiContext, ContextDep
from services.api.guards.auth import SESSION_COOKIE
from services.api.guards.backpressure import queue_room
from services.api.tasks.control import retry_task, revoke_task
from services.api.tasks.listing import QueryError, find, read_query
from services.api.tasks.routes import valid_id

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
    return await _collect(request, ctx)


async def _collect(request: Request, ctx: ApiContext) -> DashboardData:
    """The dashboard's read, which is also the charts' newest sample (no second read of the same queues)."""
    data = await collect(ctx.topology, _endpoints(request))
    ctx.history.record(data.queues, [worker.model_dump() for worker in data.workers])
    return data


@router.get("", response_class=Response, responses=_text("text/html", "The dashboard page"))
async def dashboard(request: Request, ctx: ContextDep) -> HTMLResponse:
    """View system metrics and status."""
    data = await _collect(request, ctx)
    signed_in = SESSION_COOKIE in request.cookies
    data_url = str(request.url_for("dashboard_data").path)
    page = render_page(data.model_dump(mode="json"), data_url, render_charts(ctx.history.view()), signed_in)
    return HTMLResponse(page)


async def _history(ctx: ApiContext) -> HistoryData:
    await ctx.history.sample(ctx.topology)  # the newest bin shows this moment
    return ctx.history.view()


@router.get("/history", response_model=HistoryData)
async def dashboard_history(ctx: ContextDep) -> HistoryData:
    """The last hour in 10-second bins: completions per second by state, latency percentiles, queue depth by
    stage, GPU memory in use (what the dashboard charts)."""
    return await _history(ctx)


@router.get("/charts", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_charts(ctx: ContextDep) -> HTMLResponse:
    """The dashboard's charts section, which the page fetches to redraw them."""
    return HTMLResponse(render_charts(await _history(ctx)))


# Pages for people, reached from the dashboard's search form and rows; left out of the OpenAPI document
# (and so of the schema fuzzing in tests/api/test_schema.py), like /docs. The dashboard's guard still
# covers them.
@router.get("/tasks", response_class=HTMLResponse, include_in_schema=False)
async def task_search(request: Request, ctx: ContextDep) -> HTMLResponse:
    """Find tasks with GET /api/v1/tasks's filters, under its names and rules, a page at a time."""
    fields = request.query_params.multi_items()
    if not ctx.index.ready.is_set():
        loading = "The task list is still loading; try again in a moment."
        return HTMLResponse(render_search(fields, [], None, loading), status_code=503)
    try:
        query = search_query(fields, datetime.now(UTC))
        found = find(ctx.index, read_query(query))
    except QueryError as exc:
        return HTMLResponse(render_search(fields, [], None, str(exc)), status_code=400)
    return HTMLResponse(render_search(fields, query, found))


@router.get("/tasks/{task_id}", response_class=HTMLResponse, include_in_schema=False)
async def task_page(task_id: str, request: Request, ctx: ContextDep) -> HTMLResponse:
    """View one task: its stages' times, workers and errors, its input and output."""
    found = await ctx.store.get(task_id) if valid_id(task_id) else None
    if found is None:
        return HTMLResponse(render_missing_task(task_id), status_code=404)
    return HTMLResponse(render_task_page(found, csrf_token(request, task_id)))


@router.post("/tasks/{task_id}/revoke", response_class=HTMLResponse, include_in_schema=False)
async def revoke_button(task_id: str, request: Request, ctx: ContextDep) -> Response:
    """The task page's Revoke button (a form with the page's CSRF token: dashboard/actions.py)."""
    if (refusal := await refused(request, task_id)) is not None:
        return refusal
    try:
        await revoke_task(task_id, ctx)
    except HTTPException as exc:
        return done(task_id, exc)
    return done(task_id, None)


@router.post(
    "/tasks/{task_id}/retry", response_class=HTMLResponse, include_in_schema=False, dependencies=[Depends(queue_room)]
)
async def retry_button(task_id: str, request: Request, ctx: ContextDep) -> Response:
    """The task page's Retry button (a form with the page's CSRF token: dashboard/actions.py)."""
    if (refusal := await refused(request, task_id)) is not None:
        return refusal
    try:
        await retry_task(task_id, ctx)
    except HTTPException as exc:
        return done(task_id, exc)
    return done(task_id, None)
