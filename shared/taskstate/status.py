"""Task state as stored in the KV bucket (one JSON value per task id) and its transitions.

State machine (overall `state`):

    PENDING --fetcher takes it--> RECEIVED --classifier takes it--> STARTED --uploaded--> SUCCESS
       |                             |                                     |
       +-----------------------------+------------ any stage fails ------->+--> FAILURE
       +--- waited in a queue past TM_QUEUE_TIMEOUT_S ---> TIMEOUT          (terminal states
       +--- revoked by a client -------------------------> REVOKED           never change again)

Each stage also keeps its own entry in `subtasks` (name, state, worker, times, attempts). A stage's
start is written when a worker takes it, its end when the next stage starts (as of when the stage
published the next message): one write per stage. So STARTED (input fetched and valid) is written when
the classifier takes the task, dated when the fetcher finished.
The transition methods mutate a copy that the store then writes with compare-and-set.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.messages import PIPELINE, SCHEMA_VERSION, TASK_NAME, Classification, Stage, TaskMessage


class TaskState(StrEnum):
    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    TIMEOUT = "TIMEOUT"
    REVOKED = "REVOKED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({TaskState.SUCCESS, TaskState.FAILURE, TaskState.TIMEOUT, TaskState.REVOKED})

# Share of overall progress each stage covers; the upscaler reports finer progress inside its share.
STAGE_WEIGHTS: dict[Stage, float] = {
    Stage.FETCH: 0.1,
    Stage.CLASSIFY: 0.05,
    Stage.UPSCALE: 0.75,
    Stage.UPLOAD: 0.1,
}


def utc_now(plus_s: float = 0.0) -> str:
    """Current time (plus `plus_s`) as an ISO-8601 UTC timestamp ending in Z, like the API reference shows."""
    return format_time(datetime.now(UTC) + timedelta(seconds=plus_s))


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def stage_progress(stage: Stage, fraction: float) -> float:
    """Overall progress when `stage` is `fraction` (0..1) done."""
    done_before = sum(STAGE_WEIGHTS[s] for s in PIPELINE[: PIPELINE.index(stage)])
    return round(done_before + STAGE_WEIGHTS[stage] * min(max(fraction, 0.0), 1.0), 4)


class TaskFinishedError(Exception):
    """The task is already in a terminal state: the caller's work on it is no longer wanted."""

    def __init__(self, state: TaskState) -> None:
        super().__init__(f"task already {state.value}")
        self.state = state


class StageAlreadyDoneError(Exception):
    """A redelivered message for a stage that already succeeded: its effects already happened."""


class StaleRunError(Exception):
    """A message of an earlier run of the task (it was ended and started again since): nobody wants its work,
    and the current run's state must not take anything from it."""

    def __init__(self, message_run: int, task_run: int) -> None:
        super().__init__(f"a message of run {message_run}; the task is at run {task_run}")
        self.message_run = message_run
        self.task_run = task_run


class Subtask(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Stage
    state: TaskState = TaskState.PENDING
    queued_at: str | None = None  # when its message became available to take (the queue timeout's start)
    worker_id: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    attempts: int = 0
    error: str | None = None


class CallbackDelivery(BaseModel):
    """How the task's `callback_url` webhook went (services/notifier): the latest attempt's outcome."""

    state: str  # "retrying" | "delivered" | "failed"
    attempts: int
    last_result: str  # "HTTP 200", "HTTP 503", "ConnectTimeout: ...", an address refusal
    updated_at: str


class TaskStatus(BaseModel):
    """What GET /api/v1/tasks/{id} returns: the reference's fields plus a few users will want."""

    model_config = ConfigDict(extra="ignore")

    task_id: str
    task_name: str = TASK_NAME
    state: TaskState = TaskState.PENDING
    progress: float = 0.0
    result: dict[str, Any] | None = None
    error: str | None = None
    submitted_at: str
    received_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    subtasks: list[Subtask] = Field(default_factory=list)
    priority: int = 5
    input_url: str | None = None
    output_url: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    classification: Classification | None = None
    worker_type: str | None = None  # "gpu" | "cpu": where the upscaling ran
    run: int = 1  # incremented by a new run of the ended task: a dead-letter replay, or a retry through the API
    callback: CallbackDelivery | None = None  # only for a task with a callback_url, once it has ended
    trace_id: str | None = None  # the current run's OpenTelemetry trace (shared/tracing.py); None: tracing off
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def new(cls, task_id: str, **fields: Any) -> TaskStatus:
        status = cls(task_id=task_id, submitted_at=utc_now(), **fields)
        status.subtasks = [Subtask(name=stage) for stage in PIPELINE]
        status.subtasks[0].queued_at = status.submitted_at
        return status

    def record_callback(self, run: int, state: str, attempts: int, last_result: str) -> None:
        """Note a webhook attempt on the ended task (a no-op for an earlier run than the current one)."""
        if run == self.run:
            self.callback = CallbackDelivery(
                state=state, attempts=attempts, last_result=last_result, updated_at=utc_now()
            )

    def subtask(self, stage: Stage) -> Subtask:
        for entry in self.subtasks:
            if entry.name == stage:
                return entry
        entry = Subtask(name=stage)
        self.subtasks.append(entry)
        return entry

    def _require_open(self) -> None:
        if self.state.terminal:
            raise TaskFinishedError(self.state)

    def require_run(self, run: int) -> None:
        """Refuse a write on behalf of a message of an earlier run (StaleRunError). A later run than the entry's
        cannot happen (the entry is written before its run's first message): it is taken as the current one."""
        if run < self.run:
            raise StaleRunError(run, self.run)

    def start_stage(
        self, stage: Stage, worker_id: str, message: TaskMessage | None = None, queued_since: str | None = None
    ) -> None:
        """A worker took the task's message for `stage` (again, on a redelivery).

        The message exists only because every earlier stage finished, and a stage does not record its own
        finish (one write per stage, not two): the earlier stages are recorded done here, with what
        `message` carries, as of `queued_since` (when the message was stored: the previous stage's end).
        A message of an earlier run carries nothing of this one: StaleRunError, before anything is changed.
        """
        self._require_open()
        if message is not None:
            self.require_run(message.run)
        entry = self.subtask(stage)
        if entry.state == TaskState.SUCCESS:
            raise StageAlreadyDoneError(f"{stage.value} already succeeded")
        now = utc_now()
        for earlier in PIPELINE[: PIPELINE.index(stage)]:
            if self.subtask(earlier).state != TaskState.SUCCESS:
                self._record_done(earlier, message, queued_since or now)
        if entry.queued_at is None:
            entry.queued_at = queued_since or now
        entry.state = TaskState.STARTED
        entry.worker_id = worker_id
        entry.started_at = now
        entry.attempts += 1
        if self.state == TaskState.PENDING:
            self.state = TaskState.RECEIVED
            self.received_at = entry.started_at
        self.progress = max(self.progress, stage_progress(stage, 0.0))

    def report_progress(self, stage: Stage, fraction: float) -> None:
        self._require_open()
        self.progress = max(self.progress, stage_progress(stage, fraction))

    def _record_done(self, stage: Stage, outcome: TaskMessage | None, at: str) -> None:
        self._apply(outcome)
        entry = self.subtask(stage)
        entry.state = TaskState.SUCCESS
        entry.completed_at = at
        entry.error = None
        if self.state == TaskState.RECEIVED:
            self.state = TaskState.STARTED
            self.started_at = at
        self.progress = max(self.progress, stage_progress(stage, 1.0))

    def _apply(self, outcome: TaskMessage | None) -> None:
        if outcome is not None:
            self.classification = outcome.classification or self.classification
            self.worker_type = outcome.worker_type or self.worker_type

    def retry_stage(self, stage: Stage, error: str, delay_s: float = 0.0) -> None:
        """`stage` failed in a way that may pass; its message comes back after `delay_s`."""
        self._require_open()
        entry = self.subtask(stage)
        entry.state = TaskState.PENDING
        entry.error = error
        entry.queued_at = utc_now(delay_s)

    def queued_since(self, stage: Stage, arrived: datetime) -> datetime | None:
        """Since when the task waits in `stage`'s queue, its message there stored at `arrived`; None when it
        does not wait there (ended, or the stage is in a worker's hands or done).

        An earlier stage may still read STARTED: its end is recorded when this stage starts, and the
        message proves it. A retried stage waits from its retry's due time, not from the message's arrival.
        """
        if self.state.terminal or self.subtask(stage).state != TaskState.PENDING:
            return None
        queued_at = self.subtask(stage).queued_at
        return max(arrived, parse_time(queued_at)) if queued_at else arrived

    def reopen(self) -> None:
        """Run the task again from the first stage (dead-letter replay, API retry): a new run of the same task."""
        self.run += 1
        self.state = TaskState.PENDING
        self.progress = 0.0
        self.result = self.error = self.callback = self.trace_id = None
        self.received_at = self.started_at = self.completed_at = None
        self.subtasks = [Subtask(name=stage) for stage in PIPELINE]
        self.subtasks[0].queued_at = utc_now()

    def succeed(self, result: dict[str, Any]) -> None:
        self._require_open()
        entry = self.subtask(Stage.UPLOAD)
        entry.state = TaskState.SUCCESS
        entry.completed_at = utc_now()
        self.state = TaskState.SUCCESS
        self.result = result
        self.error = None
        self.progress = 1.0
        self.completed_at = entry.completed_at

    def fail(self, error: str, stage: Stage | None = None) -> None:
        self._require_open()
        now = utc_now()
        if stage is not None:
            entry = self.subtask(stage)
            entry.state = TaskState.FAILURE
            entry.completed_at = now
            entry.error = error
        self.state = TaskState.FAILURE
        self.error = error
        self.completed_at = now

    def end(self, state: TaskState, error: str, waiting_in: Stage | None = None, since: str | None = None) -> None:
        """Terminal states decided outside the stages: TIMEOUT and REVOKED.

        `waiting_in`: the stage whose queue holds the task's message, stored at `since`; the stages before
        it are recorded done (their ends are otherwise written when that stage starts).
        """
        self._require_open()
        if waiting_in is not None:
            for earlier in PIPELINE[: PIPELINE.index(waiting_in)]:
                if self.subtask(earlier).state != TaskState.SUCCESS:
                    self._record_done(earlier, None, since or utc_now())
        self.state = state
        self.error = error
        self.completed_at = utc_now()

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes) -> TaskStatus:
        return cls.model_validate_json(data)
