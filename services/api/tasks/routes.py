"""Task submission, status and clean-up: /api/v1/tasks."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, TypeVar

import structlog
from fastapi import APIRouter, Depends, Header, HTTPException, status
from fastapi.responses import JSONResponse

from services.api import schemas
from services.api.deps import ContextDep
from services.api.guards.backpressure import queue_room
from services.api.schemas import SubmitTaskRequest, SubmitTaskResponse, error
from services.api.tasks import idempotency, intake
from shared.taskstate.status import utc_now
from shared.wire import task_entry_subject

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])
T = TypeVar("T")
log = structlog.get_logger()
CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# What each route can answer besides its success; 401 and 429 are added where the routers are
# included (services/api/app.py), with the guard and the rate limiter.
SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    200: {"model": schemas.TaskStatus, "description": "Finished task (sync: true)"},
    400: error("Invalid task name, arguments or options; the detail names the field"),
    409: error("Idempotency-Key reused for another request"),
    413: error("Request body larger than TM_MAX_BODY_BYTES"),
    503: error("NATS unreachable: nothing was queued"),
}
TASK_ERRORS: dict[int | str, dict[str, Any]] = {
    404: error("Task ID not found"),
    503: error("NATS unreachable"),
}


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
    accepted = intake.validate(body, ctx.settings)
    task_id = str(uuid.uuid4())
    if idempotency_key:
        try:
            existing = await idempotency.claim(ctx.topology.idempotency, idempotency_key, body, task_id)
        except idempotency.IdempotencyConflictError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        if existing is not None:
            return await _existing_task(ctx, existing, body.sync)
    # Subscribed before the entry exists, so a sync wait cannot miss an update.
    updates = await ctx.topology.nc.subscribe(task_entry_subject(task_id)) if body.sync else None
    try:
        record = await intake.create_and_enqueue(ctx, task_id, accepted)
    except intake.QueueUnavailableError as exc:
        if updates is not None:
            await updates.unsubscribe()
        if idempotency_key:
            await idempotency.release(ctx.topology.idempotency, idempotency_key)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "task queue unavailable, retry later") from exc
    if updates is not None:
        finished = await intake.wait_until_finished(ctx, task_id, updates, ctx.settings.sync_wait_s)
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
        found = await intake.wait_until_finished(ctx, task_id, updates, ctx.settings.sync_wait_s) or found
    if sync and found.state.terminal:
        return JSONResponse(found.model_dump(mode="json"), status_code=status.HTTP_200_OK)
    return SubmitTaskResponse(task_id=task_id, state=found.state.value, submitted_at=found.submitted_at)


# response_model: the stored status, documented (and checked on the way out) with its `result` typed
@router.get("/{task_id}", response_model=schemas.TaskStatus, responses=TASK_ERRORS)
async def get_task(task_id: str, ctx: ContextDep) -> Any:
    """Retrieve the current status of a task."""
    found = await ctx.store.get(task_id) if valid_id(task_id) else None
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Task {task_id} not found")
    if found.state.terminal:
        return found
    # A task still under way gets its estimated completion (services/api/tasks/eta.py); null when not known.
    remaining = await ctx.eta.remaining_s(found)
    if remaining is None:
        return found
    return {**found.model_dump(), "eta": utc_now(remaining), "eta_s": round(remaining, 1)}


def valid_id(task_id: str) -> bool:
    """Whether `task_id` is spelled as the API creates ids (str(uuid4()): lower-case 8-4-4-4-12 hex).
    uuid.UUID() also takes braces, urn:uuid:, upper case and bare hex, which are no key in the store:
    they are unknown tasks (404) without asking NATS."""
    return CANONICAL_ID.fullmatch(task_id) is not None
