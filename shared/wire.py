"""The wire: every subject, stream, consumer, bucket and message id the processes share, and the call
that queues a task's work. Each name is written here once; docs/architecture.md draws them.

    tm.work.p<priority>.<stage>.<task_id>     work messages, one WorkQueue stream per priority (TM_WORK_P<n>)
    tm.queued.p<priority>.<stage>.<task_id>   headers of each stored work message (the workers' doorbell)
    task.changes.<task_id>.<kind>             change events, TM_EVENTS (docs/events.md)
    task.events.<task_name>.<state>           terminal events, TM_EVENTS
    tm.live.task.changes.<task_id>.<kind>     stored change events republished (the SSE endpoint)
    tm.dead.<stage>.<task_id>                 dead letters, TM_DEAD
    $KV.TM_TASKS.<task_id>                    task state writes
    message id <task_id>.<stage>.run<N>       Nats-Msg-Id of a task's work message
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared import tracing
from shared.messages import Stage

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from shared.messages import TaskMessage


# Work queues: one WorkQueue stream per priority; one subject per task and stage, so a queued
# message can be found (and purged) by task id alone: tm.work.p<priority>.<stage>.<task_id>
def work_stream(priority: int) -> str:
    return f"TM_WORK_P{priority}"


def work_subject(priority: int, stage: Stage, task_id: str) -> str:
    return f"tm.work.p{priority}.{stage.value}.{task_id}"


def work_filter(priority: int, stage: Stage) -> str:
    return f"tm.work.p{priority}.{stage.value}.*"


def priority_filter(priority: int) -> str:
    """Every work message of one priority, any stage (the stream's subjects)."""
    return f"tm.work.p{priority}.>"


def task_work_filter(priority: int, task_id: str) -> str:
    """The work message of one task, in whichever stage's queue it waits."""
    return f"tm.work.p{priority}.*.{task_id}"


def parse_work_subject(subject: str) -> tuple[int, Stage, str]:
    """(priority, stage, task_id) of a work subject; ValueError for anything else."""
    parts = subject.split(".", 4)
    if len(parts) != 5 or parts[:2] != ["tm", "work"] or not parts[2].startswith("p"):
        raise ValueError(f"not a work subject: {subject!r}")
    return int(parts[2][1:]), Stage(parts[3]), parts[4]


def message_id(task_id: str, stage: Stage, run: int) -> str:
    """The Nats-Msg-Id of a task's message for `stage` in its `run`: a publish repeated within the
    stream's duplicate window (a retried enqueue, a stage redelivered before its ack) is stored once."""
    return f"{task_id}.{stage.value}.run{run}"


def message_run(headers: dict[str, str] | None) -> int:
    """The run a work message's id names (`message_id` read back); 1 for a message without one. The run a
    message packed before TaskMessage carried its own belongs to (one queued, or from a service not yet updated)."""
    _, separator, run = (headers or {}).get("Nats-Msg-Id", "").rpartition(".run")
    return int(run) if separator and run.isascii() and run.isdigit() else 1


def terminal_event_id(task_id: str, run: int, state: str) -> str:
    """The Nats-Msg-Id of a task run's terminal event (also the webhook's event id)."""
    return f"{task_id}.{run}.{state}"


def change_event_id(task_id: str, revision: int) -> str:
    """The id (and Nats-Msg-Id) of the change event of one revision of a task's entry."""
    return f"{task_id}.{revision}"


def dead_letter_id(origin_stream: str, origin_seq: int) -> str:
    """The Nats-Msg-Id of a dead letter: one per original message, however often it is dead-lettered."""
    return f"dead.{origin_stream}.{origin_seq}"


async def enqueue(js: JetStreamContext, message: TaskMessage, stage: Stage, run: int) -> None:
    """Queue `message` for `stage`: the one way a task's work message is published (with the current trace's
    `traceparent` header when tracing is on: shared/tracing.py)."""
    headers = {"Nats-Msg-Id": message_id(message.task_id, stage, run)}
    if tracing.ENABLED:
        tracing.inject(headers)
    await js.publish(work_subject(message.priority, stage, message.task_id), message.pack(), headers=headers)


# Each work stream republishes the headers of every message it has stored under tm.queued.>, so
# workers learn that a message is ready to take (a core subscription on tm.work.> could hear of it
# before the stream has stored it).
def queued_subject_pattern(priority: int) -> str:
    return f"tm.queued.p{priority}.>"


def queued_filter(stage: Stage) -> str:
    """Core-NATS subject of every stored message of a stage, any priority (the workers' doorbell)."""
    return f"tm.queued.*.{stage.value}.*"


def consumer_name(stage: Stage) -> str:
    return stage.value


# Task events: every terminal state (and, later, every change) on task.events.<task_name>.<state>
EVENTS_STREAM = "TM_EVENTS"
EVENTS_SUBJECTS = "task.events.>"
NOTIFIER_CONSUMER = "notifier"  # durable pull consumer of the terminal events: the webhooks (services/notifier)


def event_subject(task_name: str, state: str) -> str:
    return f"task.events.{task_name}.{state.lower()}"


# Dead letters: a message that failed for good, copied with its headers and the error.
DEAD_STREAM = "TM_DEAD"
DEAD_SUBJECTS = "tm.dead.>"


def dead_subject(stage: Stage, task_id: str) -> str:
    return f"tm.dead.{stage.value}.{task_id}"


TASKS_BUCKET = "TM_TASKS"  # KV: task_id -> TaskStatus JSON
TASKS_STREAM = f"KV_{TASKS_BUCKET}"  # the stream behind it


def task_entry_subject(task_id: str) -> str:
    """Where every write of one task's entry is published (a core subscriber sees each revision)."""
    return f"$KV.{TASKS_BUCKET}.{task_id}"


TASK_ENTRIES_FILTER = f"$KV.{TASKS_BUCKET}.>"
LEASES_BUCKET = "TM_LEASES"  # KV with TTL: singleton roles (the sweeper) held by one process at a time
IDEMPOTENCY_BUCKET = "TM_IDEMPOTENCY"  # KV with TTL: hashed Idempotency-Key -> task_id
WORKERS_BUCKET = "TM_WORKERS"  # KV with TTL: <service>.<worker_id> -> WorkerInfo JSON (heartbeats)
SESSIONS_BUCKET = "TM_SESSIONS"  # KV with TTL: dashboard session ids signed out (kept one session lifetime)
BLOBS_BUCKET = "TM_BLOBS"  # object store: <task_id>/input, <task_id>/output
BLOBS_STREAM = f"OBJ_{BLOBS_BUCKET}"  # the stream under the object store (its max age is the objects' retention)


def service_status_subject(name: str, instance_id: str) -> str:
    """An instance's `status` endpoint on the NATS service API (shared/runtime/micro.py): its heartbeat record."""
    return f"tm.status.{name}.{instance_id}"


def input_object(task_id: str) -> str:
    return f"{task_id}/input"


def output_object(task_id: str) -> str:
    return f"{task_id}/output"


# Change events: every change of a task, task.changes.<task_id>.<kind> (shared/taskstate/events.py)
CHANGES_SUBJECTS = "task.changes.>"


def change_subject(task_id: str, kind: str) -> str:
    return f"task.changes.{task_id}.{kind}"


def task_changes_filter(task_id: str) -> str:
    """Every change event of one task (the SSE endpoint's filter)."""
    return f"task.changes.{task_id}.*"


# The events stream republishes every stored change event under tm.live.<subject>, with its stream
# sequence in the Nats-Sequence header: a reader following one task (the SSE endpoint) subscribes to
# that with plain core NATS and reads what was stored before by direct gets, instead of creating (and
# deleting) a JetStream consumer per reader.
LIVE_CHANGES_SUBJECTS = "tm.live.task.changes.>"


def live_changes_filter(task_id: str) -> str:
    """The republished copies of one task's stored change events."""
    return f"tm.live.task.changes.{task_id}.*"
