"""The dead-letter stream: messages that failed for good, kept with their headers and error.

A stage that gives up on a message (a permanent error, or its retries spent) copies it here before
acknowledging it; the sweeper does the same for a message JetStream stopped delivering (max
deliveries reached, e.g. a worker crashing on it every time). Operators list, inspect, replay or
discard them with `task-manager dlq`, or with the NATS CLI (`nats stream view TM_DEAD`).

A replay and the API's retry (POST /api/v1/tasks/{id}/retry) are the same thing, `start_new_run`:
the ended task runs again from the first stage as its next run, and its dead letters go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared import tracing
from shared.messages import PIPELINE, Stage, TaskMessage, UpscaleOptions
from shared.taskstate.status import TaskFinishedError, TaskState, TaskStatus, utc_now
from shared.taskstate.store import TaskGoneError, TaskStore
from shared.wire import (
    DEAD_STREAM,
    DEAD_SUBJECTS,
    dead_letter_id,
    dead_subject,
    enqueue,
    task_work_filter,
    work_stream,
)

log = structlog.get_logger()

# Headers the dead letter adds; the original message's own headers are kept beside them.
H_ERROR = "Tm-Error"
H_STAGE = "Tm-Stage"
H_ORIGIN_SUBJECT = "Tm-Origin-Subject"
H_ORIGIN_STREAM = "Tm-Origin-Stream"
H_ORIGIN_SEQ = "Tm-Origin-Seq"
H_ATTEMPTS = "Tm-Attempts"
H_FAILED_AT = "Tm-Failed-At"


def _header_value(text: str) -> str:
    return " ".join(text.split())[:2000]  # headers are single lines


async def dead_letter(
    js: JetStreamContext,
    data: bytes,
    headers: dict[str, str] | None,
    *,
    stage: Stage,
    task_id: str,
    error: str,
    origin_subject: str,
    origin_stream: str,
    origin_seq: int,
    attempts: int,
) -> None:
    """Copy a failed message to the dead-letter stream (deduplicated per original message)."""
    kept = {k: v for k, v in (headers or {}).items() if not k.startswith("Nats-")}
    await js.publish(
        dead_subject(stage, task_id),
        data,
        headers={
            **kept,
            H_ERROR: _header_value(error),
            H_STAGE: stage.value,
            H_ORIGIN_SUBJECT: origin_subject,
            H_ORIGIN_STREAM: origin_stream,
            H_ORIGIN_SEQ: str(origin_seq),
            H_ATTEMPTS: str(attempts),
            H_FAILED_AT: utc_now(),
            "Nats-Msg-Id": dead_letter_id(origin_stream, origin_seq),
        },
    )


@dataclass
class DeadLetter:
    seq: int
    task_id: str
    stage: Stage
    error: str
    attempts: int
    failed_at: str
    origin_subject: str
    headers: dict[str, str]
    message: TaskMessage | None

    def summary(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "failed_at": self.failed_at,
            "stage": self.stage.value,
            "task_id": self.task_id,
            "attempts": self.attempts,
            "error": self.error,
        }


def _parse(raw: Any) -> DeadLetter:
    headers = dict(raw.headers or {})
    try:
        message: TaskMessage | None = TaskMessage.unpack(raw.data or b"")
    except Exception:
        message = None
    return DeadLetter(
        seq=raw.seq or 0,
        task_id=raw.subject.rsplit(".", 1)[-1],
        stage=Stage(headers.get(H_STAGE, raw.subject.split(".")[2])),
        error=headers.get(H_ERROR, ""),
        attempts=int(headers.get(H_ATTEMPTS, "0") or 0),
        failed_at=headers.get(H_FAILED_AT, ""),
        origin_subject=headers.get(H_ORIGIN_SUBJECT, ""),
        headers=headers,
        message=message,
    )


async def list_dead(js: JetStreamContext, limit: int = 1000, subject: str = DEAD_SUBJECTS) -> list[DeadLetter]:
    """Dead letters in stream order, oldest first (those on `subject` only, when given)."""
    found: list[DeadLetter] = []
    seq = 1
    while len(found) < limit:
        try:
            raw = await js.get_msg(DEAD_STREAM, seq=seq, next=True, subject=subject)
        except NotFoundError:
            break
        found.append(_parse(raw))
        seq = (raw.seq or seq) + 1
    return found


async def dead_letters_of(js: JetStreamContext, task_id: str) -> list[DeadLetter]:
    """One task's dead letters, oldest first: a filtered lookup per stage, not a scan of the stream."""
    found = [dead for stage in PIPELINE for dead in await list_dead(js, subject=dead_subject(stage, task_id))]
    return sorted(found, key=lambda dead: dead.seq)


async def get_dead(js: JetStreamContext, seq: int) -> DeadLetter | None:
    try:
        return _parse(await js.get_msg(DEAD_STREAM, seq=seq))
    except NotFoundError:
        return None


async def discard_dead(js: JetStreamContext, seq: int) -> bool:
    try:
        return await js.delete_msg(DEAD_STREAM, seq)
    except NotFoundError:
        return False


# The states a task may run again from: it ended without its output.
RERUNNABLE = frozenset({TaskState.FAILURE, TaskState.TIMEOUT, TaskState.REVOKED})


class NotRerunnableError(Exception):
    """The task is not where a new run may start: not ended (or not as asked), succeeded, or already
    started again by someone else."""

    def __init__(self, status: TaskStatus) -> None:
        super().__init__(f"task {status.task_id} is {status.state.value} (run {status.run})")
        self.state = status.state
        self.run = status.run


async def start_new_run(
    js: JetStreamContext,
    store: TaskStore,
    task_id: str,
    *,
    ended_in: frozenset[TaskState] = RERUNNABLE,
    of_run: int | None = None,
) -> TaskStatus:
    """Run an ended task again from the first stage, as its next run (same id; its earlier runs' events
    stay in the events stream); returns the reopened status (PENDING, run N+1).

    The compare-and-set that reopens the entry decides between callers: it applies only while the task
    is ended in one of `ended_in`, at run `of_run` when given, so of two retries of the same run one
    starts run N+1 and the other gets NotRerunnableError. Only the winner goes on: it queues the first
    stage's message (`<task>.fetch.run<N+1>`, built from the entry: the submitted URLs, options and
    priority; nothing the ended run computed), then discards the task's dead letters, which describe a
    run that is over: replaying one would start yet another run. Raises TaskGoneError (deleted).
    """

    def reopen(status: TaskStatus) -> None:
        if status.state not in ended_in or (of_run is not None and status.run != of_run):
            raise NotRerunnableError(status)
        status.reopen()
        status.trace_id = tracing.trace_id()  # a new run, a new trace: the request's that started it

    reopened = await store.update(task_id, reopen)
    try:
        # A message of the ended run is normally gone (acked, or purged by whoever ended the task), but
        # one whose ender died before removing it would otherwise be taken as part of the new run.
        await js.purge_stream(work_stream(reopened.priority), subject=task_work_filter(reopened.priority, task_id))
        # The stored kwargs passed the submission's strict checks; callback_url among them is no option.
        options = UpscaleOptions.model_validate(reopened.kwargs)
        first = TaskMessage.first(reopened, options, store.last_written(task_id))
        await enqueue(js, first, PIPELINE[0], reopened.run)
    except Exception as exc:
        # A task with no message queued never moves again, and nothing would time it out: end the new
        # run, so that it can be started again (its dead letters are still there to replay).
        await _fail_unqueued(store, task_id, reopened.run, exc)
        raise
    try:
        for dead in await dead_letters_of(js, task_id):
            await discard_dead(js, dead.seq)
    except Exception as exc:  # the run has started; replay_dead refuses a letter left behind while it goes on
        log.warning("dead_letters_not_discarded", task_id=task_id, run=reopened.run, error=repr(exc))
    return reopened


async def _fail_unqueued(store: TaskStore, task_id: str, run: int, cause: Exception) -> None:
    def fail(status: TaskStatus) -> None:
        if status.run == run:
            status.fail(f"run {run} could not be queued: {cause!r}")

    try:
        await store.update(task_id, fail)
    except (TaskFinishedError, TaskGoneError):
        pass  # revoked or deleted meanwhile: nothing waits for the message
    except Exception as exc:  # NATS gone: the task stays PENDING without a message
        log.error("new_run_not_queued", task_id=task_id, run=run, error=repr(cause), also=repr(exc))


async def replay_dead(js: JetStreamContext, store: TaskStore, seq: int) -> str:
    """Run a dead letter's task again from the first stage (start_new_run: its dead letters go);
    returns the task id. Raises LookupError for an unknown seq, a deleted task, or a task that is not
    FAILURE any more (a replay or a retry started it again since: the letter is out of date)."""
    dead = await get_dead(js, seq)
    if dead is None:
        raise LookupError(f"no dead letter with seq {seq}")
    try:
        await start_new_run(js, store, dead.task_id, ended_in=frozenset({TaskState.FAILURE}))
    except TaskGoneError as exc:
        raise LookupError(f"task {dead.task_id} was deleted; nothing to replay") from exc
    except NotRerunnableError as exc:
        raise LookupError(f"{exc}, not FAILURE: the dead letter is out of date (discard it)") from exc
    return dead.task_id
