"""The dead-letter stream: messages that failed for good, kept with their headers and error.

A stage that gives up on a message (a permanent error, or its retries spent) copies it here before
acknowledging it; the sweeper does the same for a message JetStream stopped delivering (max
deliveries reached, e.g. a worker crashing on it every time). Operators list, inspect, replay or
discard them with `task-manager dlq`, or with the NATS CLI (`nats stream view TM_DEAD`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared.messages import PIPELINE, Stage, TaskMessage
from shared.taskstate.status import utc_now
from shared.taskstate.store import TaskGoneError, TaskStore
from shared.wire import DEAD_STREAM, DEAD_SUBJECTS, dead_letter_id, dead_subject, enqueue

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


async def list_dead(js: JetStreamContext, limit: int = 1000) -> list[DeadLetter]:
    """Dead letters in stream order, oldest first."""
    found: list[DeadLetter] = []
    seq = 1
    while len(found) < limit:
        try:
            raw = await js.get_msg(DEAD_STREAM, seq=seq, next=True, subject=DEAD_SUBJECTS)
        except NotFoundError:
            break
        found.append(_parse(raw))
        seq = (raw.seq or seq) + 1
    return found


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


async def replay_dead(js: JetStreamContext, store: TaskStore, seq: int) -> str:
    """Run a dead letter's task again from the first stage (its intermediate objects are gone) and
    remove the dead letter; returns the task id. Raises LookupError for an unknown seq or task."""
    dead = await get_dead(js, seq)
    if dead is None or dead.message is None:
        raise LookupError(f"no dead letter with seq {seq}")
    try:
        status = await store.update(dead.task_id, lambda s: s.reopen())
    except TaskGoneError as exc:
        raise LookupError(f"task {dead.task_id} was deleted; nothing to replay") from exc
    first = dead.message.model_copy(
        update={
            "input_image": None,
            "output_image": None,
            "stored_objects": [],
            "state_hint": None,
            "state_revision": None,
        }
    )
    await enqueue(js, first, PIPELINE[0], status.run)
    await discard_dead(js, seq)
    return dead.task_id
