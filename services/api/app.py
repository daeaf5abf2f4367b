"""The REST API: FastAPI app factory with NATS connected for the app's lifetime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import Depends, FastAPI

from services.api import health
from services.api.dashboard import routes as dashboard
from services.api.dashboard.signin import DASHBOARD_401, show_sign_in, signin_router
from services.api.deps import ApiContext
from services.api.errors import install_error_handlers
from services.api.guards.auth import UNAUTHORIZED, ApiKeyGuard, SignInRequired
from services.api.guards.backpressure import QueueDepth
from services.api.guards.bodylimit import BodySizeLimit
from services.api.guards.cors import ApiCors
from services.api.guards.ratelimit import TOO_MANY, RateLimiter, TokenBuckets
from services.api.head import HeadAsGet
from services.api.metrics import ApiMetrics
from services.api.schemas import operation_id
from services.api.sweeper import Sweeper
from services.api.tasks import control as task_control
from services.api.tasks import events, listing
from services.api.tasks import routes as tasks
from shared import tracing
from shared.config import Settings
from shared.nats import connect, declare
from shared.runtime.micro import Instance, announced
from shared.runtime.presence import VERSION, make_worker_id, presence
from shared.taskstate.store import TaskStore


def _tally(metrics: ApiMetrics) -> dict[str, Any]:
    """The API on the NATS service API (shared/runtime/micro.py): the tasks this replica accepted."""
    submitted = sum(
        sample.value
        for family in metrics.submitted.collect()
        for sample in family.samples
        if sample.name == "tasks_submitted_total"
    )
    return {"processed": int(submitted), "counters": {"submitted": int(submitted)}}


def create_app(settings: Settings | None = None) -> FastAPI:
    config = settings or Settings()
    keys = config.keys()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await connect(config, name="api")
        topology = await declare(nc, config)
        metrics = ApiMetrics()
        await metrics.follow_events(nc)
        store = TaskStore.of(topology)
        context = ApiContext(config, topology, store, metrics, QueueDepth(topology, config.max_queue_depth))
        await context.index.start(topology.tasks)
        app.state.context = context
        structlog.get_logger().info(
            "api_access",
            api_keys=len(keys),  # how many, never which
            rate_limit_per_s=config.rate_limit_per_s,
            rate_limit_burst=config.rate_limit_burst,
            auth_failure_per_s=config.auth_failure_per_s,
            auth_failure_burst=config.auth_failure_burst,
            max_queue_depth=config.max_queue_depth,
            max_body_bytes=config.max_body_bytes,
        )
        worker_id = make_worker_id("api")
        sweeper = Sweeper(topology, config, holder=worker_id, index=context.index)
        sweeping = asyncio.create_task(sweeper.run())
        sampling = asyncio.create_task(context.history.sample_forever(topology))

        def details() -> dict[str, Any]:
            return {"in_flight": []}  # the API holds no task between requests

        try:
            async with (
                presence(topology.workers, "api", worker_id, config.heartbeat_s, details),
                announced(nc, Instance("api", worker_id, stage="submit"), lambda: _tally(metrics), details),
            ):
                yield
        finally:
            sweeping.cancel()
            sampling.cancel()
            await asyncio.gather(sweeping, sampling, return_exceptions=True)
            await metrics.stop()
            await context.index.stop()
            await nc.drain()
            tracing.shutdown()  # the spans still buffered

    app = FastAPI(
        title="task-manager",
        version=VERSION,
        description="GPU image super-resolution tasks on NATS JetStream.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_body_bytes=config.max_body_bytes)
    app.add_middleware(HeadAsGet)  # a HEAD is a GET all the way through
    if config.origins():
        # Outside the guards and the body limit: preflights are answered before any guard, and 401s,
        # 413s and 429s carry the CORS headers too, so a page on an allowed origin can read why.
        app.add_middleware(ApiCors, origins=config.origins())
    if tracing.setup("api", VERSION, make_worker_id("api")):  # only when OTEL_* asks for it (shared/tracing.py)
        app.add_middleware(tracing.TraceRequests)  # a span for each POST that starts task work
    # Access control in one place: with keys configured, /api/v1 and /dashboard need one (/health
    # and the docs stay open); every /api/v1 route spends a token of its client's bucket. Wrong keys
    # spend their address's failure budget, one for every guard (services/api/guards/auth.py).
    failures = TokenBuckets(config.auth_failure_per_s, config.auth_failure_burst)
    guard = [Depends(ApiKeyGuard(keys, failures))] if keys else []
    guarded = {**UNAUTHORIZED, **TOO_MANY} if keys else {}
    limiter = Depends(RateLimiter(config.rate_limit_per_s, config.rate_limit_burst))
    limited = [*guard, limiter]
    dashboard_guard, dashboard_errors = guard, guarded
    if keys and config.dashboard_session_s:  # browsers sign in to the dashboard once (dashboard/signin.py)
        browser_guard = ApiKeyGuard(keys, failures, session_s=config.dashboard_session_s)
        dashboard_guard, dashboard_errors = [Depends(browser_guard)], {**DASHBOARD_401, **TOO_MANY}
        # Every sign-in attempt also spends a token of its address's rate-limit bucket.
        app.include_router(signin_router(browser_guard), dependencies=[limiter], responses=TOO_MANY)
        app.add_exception_handler(SignInRequired, show_sign_in)
    app.include_router(listing.router, dependencies=limited, responses={**guarded, **TOO_MANY})
    app.include_router(tasks.router, dependencies=limited, responses={**guarded, **TOO_MANY})
    app.include_router(task_control.router, dependencies=limited, responses={**guarded, **TOO_MANY})
    app.include_router(events.router, dependencies=limited, responses={**guarded, **TOO_MANY})
    app.include_router(health.router)
    app.include_router(dashboard.router, dependencies=dashboard_guard, responses=dashboard_errors)
    return app
