"""Task submission, status and clean-up: /api/v1/tasks."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import structlog
from fastapi import APIRouter, Depends, Header, HTTPException, status
from fastapi.responses import JSONResponse
from nats.aio.subscription import Subscription
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from services.api import idempotency
from services.api.backpressure import queue_room
from services.api.deps import ContextDep
from services.api.schemas import SubmitTaskRequest, SubmitTaskResponse, error
from services.api.submission import SubmissionError, validate_callback, validate_submission
from shared.egress import s3_endpoint
from shared.messages import PIPELINE, TaskMessage
from shared.netguard import AddressPolicy
from shared.state import TaskStatus
from shared.wire import enqueue, task_entry_subject

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])
T = TypeVar("T")
log = structlog.get_logger()
FAILOVER_WAIT_S = 10.0
CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# What each route can answer besides its success; 401 and 429 are added where the routers are
# included (services/api/app.py), with the guard and the rate limiter.
SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    200: {"model": TaskStatus, "description": "Finished task (sync: true)"},
    400: error("Invalid task name, arguments or options; the detail names the field"),
    409: error("Idempotency-Key reused for another request"),
    413: error("Request body larger than TM_MAX_BODY_BYTES"),
    503: error("NATS unreachable: nothing was queued"),
}
TASK_ERRORS: dict[int | str, dict[str, Any]] = {
    404: error("Task ID not found"),
    503: error("NATS unreachable"),
}


async def _through_failover(step: Callable[[], Awaitable[T]]) -> T:
    """Retry a write the stream certainly did not store (no leader during an election, ~5-8 s on
    a 3-node cluster), so clients do not see a failover; anything else propagates (503)."""
    deadline = asyncio.get_running_loop().time() + FAILOVER_WAIT_S
    while True:
        try:
            return await step()
        except (NoStreamResponseError, ServiceUnavailableError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.25)


async def _wait_until_finished(
    ctx: ContextDep, task_id: str, updates: Subscription, timeout_s: float
) -> TaskStatus | None:
    """Follow the task's KV subject (subscribed before the task was created, so no update can be
    missed; no polling) until it is terminal. None on timeout or deletion."""
    try:
        current = await ctx.store.get(task_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while current is None or not current.state.terminal:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                msg = await updates.next_msg(timeout=remaining)
            except TimeoutError:
                return None
            if not msg.data:  # a delete or purge marker
                return None
            current = TaskStatus.from_json(msg.data)
        return current
    finally:
        await updates.unsubscribe()


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SubmitTaskResponse,
    responses=SUBMIT_ERRORS,
    dependencies=[Depends(queue_room)],
)
async def submit_task(
    body: SubmitTaskRequest,
    ctx: ContextDep,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=255, description="Submitting again with the same key returns the same task"),
    ] = None,
) -> Any:
    """Submit a new task for processing."""
    try:
        policy = AddressPolicy.from_settings(ctx.settings, s3_endpoint=s3_endpoint())
        input_url, output_url, options = validate_submission(body, s3_endpoint(), policy, ctx.settings.file_root)
        callback_url = validate_callback(body, policy)
    except SubmissionError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    task_id = str(uuid.uuid4())
    if idempotency_key:
        try:
            existing = await idempotency.claim(ctx.topology.idempotency, idempotency_key, body, task_id)
        except idempotency.IdempotencyConflictError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        if existing is not None:
            return await _existing_task(ctx, existing, body.sync)
    record = TaskStatus.new(
        task_id,
        task_name=body.task_name,
        priority=body.priority,
        input_url=input_url,
        output_url=output_url,
        # The webhook rides in the stored kwargs (not in the work message): the notifier reads it
        # from the terminal event's status.
        kwargs={**body.kwargs, "callback_url": callback_url} if callback_url else body.kwargs,
    )
    message = TaskMessage(
        task_id=task_id,
        task_name=body.task_name,
        priority=body.priority,
        input_url=input_url,
        output_url=output_url,
        options=options,
        submitted_at=record.submitted_at,
    )
    updates = await ctx.topology.nc.subscribe(task_entry_subject(task_id)) if body.sync else None
    try:
        revision = await _through_failover(lambda: ctx.store.create(record))
        # The entry as written rides along: the fetcher's start writes on it without reading it first.
        first = message.model_copy(update={"state_hint": record.to_json().decode(), "state_revision": revision})
        await _through_failover(lambda: enqueue(ctx.topology.js, first, PIPELINE[0], run=1))
    except Exception as exc:  # NATS unreachable or JetStream unavailable: nothing was accepted
        if updates is not None:
            await updates.unsubscribe()
        with contextlib.suppress(Exception):
            await ctx.store.delete(task_id)
        if idempotency_key:
            await idempotency.release(ctx.topology.idempotency, idempotency_key)
        log.error("submit_failed", task_id=task_id, error=repr(exc))
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "task queue unavailable, retry later") from exc
    ctx.metrics.submitted.labels(body.task_name).inc()
    log.info("task_submitted", task_id=task_id, priority=body.priority, sync=body.sync)
    if updates is not None:
        finished = await _wait_until_finished(ctx, task_id, updates, ctx.settings.sync_wait_s)
        if finished is not None:
            return JSONResponse(finished.model_dump(mode="json"), status_code=status.HTTP_200_OK)
    return SubmitTaskResponse(task_id=task_id, state=record.state.value, submitted_at=record.submitted_at)


async def _existing_task(ctx: ContextDep, task_id: str, sync: bool) -> Any:
    """The answer to a repeated submission: the task the key already names."""
    found = await ctx.store.get(task_id)
    if found is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"Idempotency-Key names task {task_id}, which was deleted")
    if sync and not found.state.terminal:
        updates = await ctx.topology.nc.subscribe(task_entry_subject(task_id))
        found = await _wait_until_finished(ctx, task_id, updates, ctx.settings.sync_wait_s) or found
    if sync and found.state.terminal:
        return JSONResponse(found.model_dump(mode="json"), status_code=status.HTTP_200_OK)
    return SubmitTaskResponse(task_id=task_id, state=found.state.value, submitted_at=found.submitted_at)


@router.get("/{task_id}", response_model=TaskStatus, responses=TASK_ERRORS)
async def get_task(task_id: str, ctx: ContextDep) -> TaskStatus:
    """Retrieve the current status of a task."""
    found = await ctx.store.get(task_id) if valid_id(task_id) else None
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Task {task_id} not found")
    return found


def valid_id(task_id: str) -> bool:
    """Whether `task_id` is spelled as the API creates ids (str(uuid4()): lower-case 8-4-4-4-12 hex).
    uuid.UUID() also takes braces, urn:uuid:, upper case and bare hex, which are no key in the store:
    they are unknown tasks (404) without asking NATS."""
    return CANONICAL_ID.fullmatch(task_id) is not None
