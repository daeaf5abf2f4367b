"""A submission's way in: validate it, create the task and queue its first message, wait for it (sync).

The route (services/api/tasks/routes.py) strings these together with the idempotency claim; each step
answers in HTTP terms only where a client can act on it: 400 naming the field, 503 when nothing was queued.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from fastapi import HTTPException, status
from nats.aio.subscription import Subscription
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from services.api.deps import ApiContext
from services.api.schemas import SubmitTaskRequest
from services.api.tasks.submission import SubmissionError, validate_callback, validate_submission
from shared import tracing
from shared.config import Settings
from shared.egress.failures import s3_endpoint
from shared.egress.netguard import AddressPolicy
from shared.messages import PIPELINE, TaskMessage, UpscaleOptions
from shared.taskstate.status import TaskStatus
from shared.wire import enqueue

T = TypeVar("T")
log = structlog.get_logger()
FAILOVER_WAIT_S = 10.0


@dataclass(frozen=True)
class Accepted:
    """A submission that passed every check: what its task is made of."""

    body: SubmitTaskRequest
    input_url: str
    output_url: str
    options: UpscaleOptions
    callback_url: str | None


class QueueUnavailableError(Exception):
    """NATS or JetStream could not take the task: nothing was queued, the client may retry."""


def validate(body: SubmitTaskRequest, settings: Settings) -> Accepted:
    """The submission checked against the contract and the address rules; a 400 naming the field."""
    try:
        policy = AddressPolicy.from_settings(settings, s3_endpoint=s3_endpoint())
        input_url, output_url, options = validate_submission(
            body, s3_endpoint(), policy, settings.file_root, settings.max_output_pixels
        )
        callback_url = validate_callback(body, policy)
    except SubmissionError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    return Accepted(body, input_url, output_url, options, callback_url)


async def create_and_enqueue(ctx: ApiContext, task_id: str, accepted: Accepted) -> TaskStatus:
    """Write the task's entry and queue its first message; QueueUnavailableError (entry removed) when
    either could not be done."""
    body = accepted.body
    record = TaskStatus.new(
        task_id,
        task_name=body.task_name,
        priority=body.priority,
        input_url=accepted.input_url,
        output_url=accepted.output_url,
        # The webhook rides in the stored kwargs (not in the work message): the notifier reads it
        # from the terminal event's status.
        kwargs={**body.kwargs, "callback_url": accepted.callback_url} if accepted.callback_url else body.kwargs,
        trace_id=tracing.trace_id(),  # the request's trace (shared/tracing.py), which enqueue carries on
    )
    try:
        revision = await _through_failover(lambda: ctx.store.create(record))
        # The entry as written rides along: the fetcher's start writes on it without reading it first.
        first = TaskMessage.first(record, accepted.options, (record.to_json(), revision))
        await _through_failover(lambda: enqueue(ctx.topology.js, first, PIPELINE[0], run=1))
    except Exception as exc:  # NATS unreachable or JetStream unavailable: nothing was accepted
        with contextlib.suppress(Exception):
            await ctx.store.delete(task_id)
        log.error("submit_failed", task_id=task_id, error=repr(exc))
        raise QueueUnavailableError(str(exc)) from exc
    ctx.metrics.submitted.labels(body.task_name).inc()
    log.info("task_submitted", task_id=task_id, priority=body.priority, sync=body.sync)
    return record


async def wait_until_finished(
    ctx: ApiContext, task_id: str, updates: Subscription, timeout_s: float
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
