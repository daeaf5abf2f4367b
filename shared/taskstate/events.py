"""Change events: one JSON message for every task or stage state change written through the store.

Subjects, all stored in the TM_EVENTS stream (see docs/events.md):

    task.changes.<task_id>.<kind>     every change of one task; kind: state | stage | retry | progress
    task.events.<task_name>.<state>   terminal states only, the whole TaskStatus (older subscribers)

A change event says what changed between two KV revisions of the task's entry: the overall state
(with the previous one), the stage that changed (with its previous state), the progress, the error,
and the result once the task has ended. Its id is `<task_id>.<revision>`, which is also its
Nats-Msg-Id, so a publish repeated within the stream's duplicate window is stored once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.messages import SCHEMA_VERSION, TASK_NAME, Stage
from shared.taskstate.status import TaskState, TaskStatus, utc_now
from shared.wire import change_event_id, change_subject


class EventKind(StrEnum):
    STATE = "state"  # the task's overall state changed: submitted (PENDING), RECEIVED, STARTED, terminal
    STAGE = "stage"  # a stage started (again) or finished; the overall state stayed
    RETRY = "retry"  # a stage failed in a way that may pass: its message comes back after a delay
    PROGRESS = "progress"  # only the progress moved (the upscaler reports it within its stage)


@dataclass(frozen=True)
class Snapshot:
    """What an event compares: the parts of a status a change event reports on."""

    state: TaskState | None
    stages: tuple[tuple[Stage, TaskState, int], ...]  # (stage, state, attempts)
    progress: float
    run: int

    @classmethod
    def of(cls, status: TaskStatus | None) -> Snapshot:
        if status is None:
            return cls(None, (), 0.0, 0)
        stages = tuple((s.name, s.state, s.attempts) for s in status.subtasks)
        return cls(status.state, stages, status.progress, status.run)


class TaskEvent(BaseModel):
    """One change of a task, as published on task.changes.<task_id>.<kind> (JSON)."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    event_id: str  # <task_id>.<revision>: the message id, unique per change
    kind: EventKind
    task_id: str
    task_name: str = TASK_NAME
    run: int = 1
    revision: int  # the KV revision written: orders one task's events
    state: TaskState
    previous_state: TaskState | None = None  # None at submission (and in an event republished after a crash)
    stage: Stage | None = None  # the stage that changed, if one did
    stage_state: TaskState | None = None
    previous_stage_state: TaskState | None = None
    attempts: int | None = None  # the stage's attempts so far
    progress: float = 0.0
    error: str | None = None
    result: dict[str, Any] | None = None  # once the task succeeded
    timestamp: str

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @property
    def subject(self) -> str:
        return change_subject(self.task_id, self.kind.value)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TaskEvent:
        return cls.model_validate_json(data)

    @classmethod
    def between(cls, before: Snapshot, after: TaskStatus, revision: int) -> TaskEvent | None:
        """The event for the write that turned `before` into `after`, None when nothing it reports changed."""
        old_stages = {name: (state, attempts) for name, state, attempts in before.stages}
        changed = None
        # The last stage that changed: a stage's start also records the earlier stages' ends, and says more.
        for entry in reversed(after.subtasks) if before.stages else ():  # a new task: no stage has changed yet
            if old_stages.get(entry.name) != (entry.state, entry.attempts):
                changed = entry
                break
        if after.state != before.state or after.run != before.run:
            kind = EventKind.STATE
        elif changed is not None:
            kind = EventKind.RETRY if changed.state == TaskState.PENDING and changed.error else EventKind.STAGE
        elif after.progress != before.progress:
            kind = EventKind.PROGRESS
        else:
            return None
        previous_stage = old_stages.get(changed.name) if changed is not None else None
        return cls(
            event_id=change_event_id(after.task_id, revision),
            kind=kind,
            task_id=after.task_id,
            task_name=after.task_name,
            run=after.run,
            revision=revision,
            state=after.state,
            previous_state=before.state,
            stage=changed.name if changed is not None else None,
            stage_state=changed.state if changed is not None else None,
            previous_stage_state=previous_stage[0] if previous_stage is not None else None,
            attempts=changed.attempts if changed is not None else None,
            progress=after.progress,
            error=(changed.error if kind == EventKind.RETRY and changed is not None else None) or after.error,
            result=after.result if after.state.terminal else None,
            timestamp=utc_now(),
        )
