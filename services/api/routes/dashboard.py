"""The operator's view: /dashboard (HTML) and /dashboard/metrics (Prometheus text)."""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.api.deps import ContextDep
from services.api.overview import list_workers, queue_depths

router = APIRouter(prefix="/dashboard", tags=["monitoring"])

DOC_PAGES = (("/docs", "Swagger UI"), ("/redoc", "ReDoc"))
GPU_FIELDS = (
    "device",
    "device_name",
    "precision",
    "tile",
    "memory_total_mb",
    "memory_used_mb",
    "models_loaded",
)


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...], empty: str) -> str:
    if not rows:
        return f"<p class='empty'>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _endpoints(request: Request) -> list[dict[str, Any]]:
    """Every documented endpoint, from the app's own OpenAPI schema, plus the docs pages."""
    rows = [
        {
            "methods": " ".join(m.upper() for m in operations),
            "path": path,
            "summary": next((op.get("summary", "") for op in operations.values()), ""),
        }
        for path, operations in request.app.openapi()["paths"].items()
    ]
    rows += [{"methods": "GET", "path": path, "summary": summary} for path, summary in DOC_PAGES]
    return rows


def _text(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    # response_class=Response documents nothing itself, so the errors added where the router is
    # included stay application/json (with HTMLResponse they would be documented as text/html).
    return {200: {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}}


@router.get("/metrics", response_class=Response, responses=_text("text/plain", "Prometheus text format"))
async def metrics(ctx: ContextDep) -> Response:
    """Raw Prometheus metrics for monitoring integration."""
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("", response_class=Response, responses=_text("text/html", "The dashboard page"))
async def dashboard(request: Request, ctx: ContextDep) -> HTMLResponse:
    """View system metrics and status."""
    workers = await list_workers(ctx.topology)
    queues = await queue_depths(ctx.topology)
    gpus = [w for w in workers if w.get("service") == "upscaler"]
    busy_queues = [q for q in queues if q["pending"] or q["ack_pending"]]
    totals: dict[str, dict[str, Any]] = {}
    for q in queues:
        total = totals.setdefault(q["stage"], {"stage": q["stage"], "pending": 0, "ack_pending": 0})
        total["pending"] += q["pending"]
        total["ack_pending"] += q["ack_pending"]
    for w in workers:
        w["in_flight"] = len(w.get("in_flight", []))
        w["processed"] = sum((w.get("counters") or {}).values())
    html = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>task-manager dashboard</title>
<meta http-equiv="refresh" content="5">
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}}table{{border-collapse:collapse;margin-bottom:1.5rem}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}th{{background:#f3f3f3}}.empty{{color:#888}}</style>
</head><body>
<h1>task-manager</h1>
<h2>Worker pool</h2>
{
        _table(
            workers,
            (
                "service",
                "worker_id",
                "host",
                "pid",
                "version",
                "started_at",
                "heartbeat_at",
                "concurrency",
                "in_flight",
                "processed",
            ),
            "No workers are running.",
        )
    }
<h2>GPU configuration</h2>
{_table(gpus, ("worker_id",) + GPU_FIELDS, "No upscaler is running.")}
<h2>Queues</h2>
{_table(list(totals.values()), ("stage", "pending", "ack_pending"), "No queues declared.")}
<h3>Non-empty priority queues</h3>
{
        _table(
            busy_queues,
            ("stream", "priority", "stage", "pending", "ack_pending", "redelivered"),
            "All queues are empty.",
        )
    }
<h2>API endpoints</h2>
{_table(_endpoints(request), ("methods", "path", "summary"), "")}
<p><a href="/dashboard/metrics">Prometheus metrics</a> · <a href="/docs">Swagger UI</a> · <a href="/redoc">ReDoc</a></p>
</body></html>"""
    return HTMLResponse(html)
