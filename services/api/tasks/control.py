"""Ending tasks early, and running ended ones again: revoke (POST /api/v1/tasks/{id}/revoke), retry
(POST /api/v1/tasks/{id}/retry) and clean-up (DELETE)."""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Depends, HTTPException, status

from services.api import schemas
from services.api.deps import ContextDep
from services.api.guards.backpressure import queue_room
from services.api.schemas import CleanupResponse, error
from services.api.tasks.routes import TASK_ERRORS, valid_id
from shared.blobs import discard_task_blobs
from shared.runtime.deadletters import NotRerunnableError, start_new_run
from shared.taskstate.lifecycle import end_task, purge_queued
from shared.taskstate.status import TaskFinishedError, TaskState, TaskStatus
from shared.taskstate.store import TaskGoneError

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])
log = structlog.get_logger()

REVOKE_ERRORS = {**TASK_ERRORS, 409: error("The task already finished")}
RETRYABLE = "FAILURE, TIMEOUT or REVOKED"  # shared/runtime/deadletters.py RERUNNABLE
RETRY_ERRORS = {**TASK_ERRORS, 409: error(f"The task is not {RETRYABLE} (running, succeeded, or retried already)")}


async def _found(ctx: ContextDep, task_id: str) -> TaskStatus:
    found = await ctx.store.get(task_id) if valid_id(task_id) else None
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Task {task_id} not found")
    return found


@router.post("/{task_id}/revoke", response_model=schemas.TaskStatus, responses=REVOKE_ERRORS)
async def revoke_task(task_id: str, ctx: ContextDep) -> TaskStatus:
    """Cancel a task: a queued one leaves its queue, a running one stops at its next stage boundary."""
    found = await _found(ctx, task_id)
    try:
        ended = await end_task(ctx.topology, ctx.store, task_id, TaskState.REVOKED, "revoked by client")
    except TaskFinishedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"Task {task_id} already finished: {exc.state.value}") from exc
    except TaskGoneError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Task {task_id} not found") from exc
    log.info("task_revoked", task_id=task_id, was=found.state.value)
    assert ended is not None
    return ended


@router.post(
    "/{task_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.TaskStatus,
    responses=RETRY_ERRORS,
    dependencies=[Depends(queue_room)],  # a new run is new work in the queues, as a submission is
)
async def retry_task(task_id: str, ctx: ContextDep) -> TaskStatus:
    """Run a FAILURE, TIMEOUT or REVOKED task again from its first stage, as the next run of the same task."""
    found = await _found(ctx, task_id)
    try:
        # The run read here is the one retried: of two retries at once, the compare-and-set lets one in.
        reopened = await start_new_run(ctx.topology.js, ctx.store, task_id, of_run=found.run)
    except NotRerunnableError as exc:
        detail = f"Task {task_id} is {exc.state.value} (run {exc.run}); only a {RETRYABLE} task can be retried"
        if exc.run != found.run:
            detail = f"Task {task_id} was retried already: run {exc.run} is {exc.state.value}"
        raise HTTPException(status.HTTP_409_CONFLICT, detail) from exc
    except TaskGoneError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Task {task_id} not found") from exc
    log.info("task_retried", task_id=task_id, was=found.state.value, run=reopened.run)
    return reopened


@router.delete("/{task_id}", response_model=CleanupResponse, responses=TASK_ERRORS)
async def cleanup_task(task_id: str, ctx: ContextDep) -> CleanupResponse:
    """Remove task resources: a running task is revoked first; then its queued message, objects and state go."""
    found = await _found(ctx, task_id)
    if not found.state.terminal:
        try:
            found = await end_task(ctx.topology, ctx.store, task_id, TaskState.REVOKED, "deleted by client") or found
        except (TaskFinishedError, TaskGoneError):
            pass
    await purge_queued(ctx.topology, found)
    await ctx.store.delete(task_id)
    # A worker still holding the task drops it at its next state write and removes what it stored;
    # removing the objects here covers the tasks nobody holds.
    await discard_task_blobs(ctx.topology.blobs, task_id)
    log.info("task_deleted", task_id=task_id, state=found.state.value)
    return CleanupResponse(status="success", message=f"Task {task_id} cleaned up")
