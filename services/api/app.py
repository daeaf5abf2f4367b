"""The REST API: FastAPI app factory with NATS connected for the app's lifetime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.api.deps import ApiContext
from services.api.metrics import ApiMetrics
from services.api.routes import dashboard, health, task_control, tasks
from services.api.sweeper import Sweeper
from shared.config import Settings
from shared.nats import connect, declare
from shared.service import VERSION, make_worker_id
from shared.tasks import TaskStore


def _describe(errors: list) -> str:
    parts = []
    for error in errors:
        location = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


async def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    """The reference answers invalid parameters with 400 and a readable `detail` naming the field."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _describe(list(exc.errors()))}, status_code=400)


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = settings or Settings()
        nc = await connect(config, name="api")
        topology = await declare(nc, config)
        metrics = ApiMetrics()
        await metrics.follow_events(nc)
        app.state.context = ApiContext(config, topology, TaskStore(topology.tasks, topology.js), metrics)
        sweeper = Sweeper(topology, config, holder=make_worker_id("api"))
        sweeping = asyncio.create_task(sweeper.run())
        try:
            yield
        finally:
            sweeping.cancel()
            await asyncio.gather(sweeping, return_exceptions=True)
            await metrics.stop()
            await nc.drain()

    app = FastAPI(
        title="task-manager",
        version=VERSION,
        description="GPU image super-resolution tasks on NATS JetStream.",
        lifespan=lifespan,
    )
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.include_router(tasks.router)
    app.include_router(task_control.router)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    return app
