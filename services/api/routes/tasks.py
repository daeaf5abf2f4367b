"""Task submission, status and clean-up: /api/v1/tasks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from typing import Any

import structlog
from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse
from nats.aio.subscription import Subscription

from services.api.deps import ContextDep
from services.api.schemas import CleanupResponse, ErrorResponse, SubmitTaskRequest, SubmitTaskResponse
from services.api.submission import SubmissionError, validate_submission
from shared.blobs import discard_task_blobs
from shared.messages import PIPELINE, TASKS_BUCKET, TaskMessage, work_stream, work_subject
from shared.state import TaskStatus

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])
log = structlog.get_logger()

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid task name or arguments"},
    503: {"model": ErrorResponse, "description": "NATS unreachable: nothing was queued"},
    404: {"model": ErrorResponse, "description": "Task ID not found"},
}


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


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
    responses={**ERRORS, 200: {"model": TaskStatus, "description": "Finished task (sync: true)"}},
)
async def submit_task(body: SubmitTaskRequest, ctx: ContextDep) -> Any:
    """Submit a new task for processing."""
    try:
        input_url, output_url, options = validate_submission(body, _s3_endpoint())
    except SubmissionError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    task_id = str(uuid.uuid4())
    record = TaskStatus.new(
        task_id,
        task_name=body.task_name,
        priority=body.priority,
        input_url=input_url,
        output_url=output_url,
        kwargs=body.kwargs,
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
    updates = await ctx.topology.nc.subscribe(f"$KV.{TASKS_BUCKET}.{task_id}") if body.sync else None
    try:
        await ctx.store.create(record)
        await ctx.topology.js.publish(
            work_subject(body.priority, PIPELINE[0], task_id),
            message.pack(),
            headers={"Nats-Msg-Id": f"{task_id}.{PIPELINE[0].value}"},
        )
    except Exception as exc:  # NATS unreachable or JetStream unavailable: nothing was accepted
        if updates is not None:
            await updates.unsubscribe()
        with contextlib.suppress(Exception):
            await ctx.store.delete(task_id)
        log.error("submit_failed", task_id=task_id, error=repr(exc))
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "task queue unavailable, retry later") from exc
    ctx.metrics.submitted.labels(body.task_name).inc()
    log.info("task_submitted", task_id=task_id, priority=body.priority, sync=body.sync)
    if updates is not None:
        finished = await _wait_until_finished(ctx, task_id, updates, ctx.settings.sync_wait_s)
        if finished is not None:
            return JSONResponse(finished.model_dump(mode="json"), status_code=status.HTTP_200_OK)
    return SubmitTaskResponse(task_id=task_id, state=record.state.value, submitted_at=record.submitted_at)


@router.get("/{task_id}", response_model=TaskStatus, responses=ERRORS)
async def get_task(task_id: str, ctx: ContextDep) -> TaskStatus:
    """Retrieve the current status of a task."""
    found = await ctx.store.get(task_id) if _valid_id(task_id) else None
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Task {task_id} not found")
    return found


@router.delete("/{task_id}", response_model=CleanupResponse, responses=ERRORS)
async def cleanup_task(task_id: str, ctx: ContextDep) -> CleanupResponse:
    """Remove a task: its queued message, its stored objects and its state."""
    found = await ctx.store.get(task_id) if _valid_id(task_id) else None
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Task {task_id} not found")
    # Purge by subject: a queued message of any stage for this task, in its priority's stream.
    await ctx.topology.js.purge_stream(work_stream(found.priority), subject=f"tm.work.p{found.priority}.*.{task_id}")
    await ctx.store.delete(task_id)
    # After the state is gone, a worker still holding the task drops it at its next state write
    # and removes what it stored; removing the objects here covers the tasks nobody holds.
    await discard_task_blobs(ctx.topology.blobs, task_id)
    log.info("task_deleted", task_id=task_id, state=found.state.value)
    return CleanupResponse(status="success", message=f"Task {task_id} cleaned up")


def _valid_id(task_id: str) -> bool:
    try:
        uuid.UUID(task_id)
    except ValueError:
        return False
    return True
