"""Task state transitions (pure logic)."""

from __future__ import annotations

import pytest

from shared.messages import Category, Classification, Stage, TaskMessage
from shared.taskstate.status import (
    StageAlreadyDoneError,
    TaskFinishedError,
    TaskState,
    TaskStatus,
    parse_time,
    stage_progress,
)


def new_status() -> TaskStatus:
    return TaskStatus.new("t1", input_url="https://x/a.png", output_url="s3://b/a.png")


def test_new_task_is_pending_with_one_subtask_per_stage() -> None:
    status = new_status()
    assert status.state == TaskState.PENDING
    assert [s.name for s in status.subtasks] == [Stage.FETCH, Stage.CLASSIFY, Stage.UPSCALE, Stage.UPLOAD]
    assert status.submitted_at.endswith("Z")


def test_happy_path_moves_received_started_success() -> None:
    status = new_status()
    status.start_stage(Stage.FETCH, "w1")
    assert status.state == TaskState.RECEIVED and status.received_at
    assert status.subtask(Stage.FETCH).state == TaskState.STARTED
    # A stage does not record its own end: the next one's start does, dated when its message was stored.
    status.start_stage(Stage.CLASSIFY, "w2", queued_since="2026-01-01T00:00:01.000Z")
    assert status.state == TaskState.STARTED and status.started_at == "2026-01-01T00:00:01.000Z"
    assert status.subtask(Stage.FETCH).state == TaskState.SUCCESS
    assert status.subtask(Stage.FETCH).completed_at == status.subtask(Stage.CLASSIFY).queued_at == status.started_at
    classification = Classification(category=Category.PHOTO, width=4, height=2, aspect_ratio=2.0)
    outcome = TaskMessage(task_id="t1", input_url="a", output_url="b", submitted_at="x", classification=classification)
    status.start_stage(Stage.UPSCALE, "w3", outcome)
    assert status.classification == classification
    status.start_stage(Stage.UPLOAD, "w4", outcome)
    status.succeed({"ok": True})
    assert status.state == TaskState.SUCCESS and status.progress == 1.0 and status.completed_at
    assert [s.state for s in status.subtasks] == [TaskState.SUCCESS] * 4


def test_a_later_stage_records_every_earlier_one_done() -> None:
    # A stage's message exists only because every earlier stage finished, whatever the state says.
    status = new_status()
    status.start_stage(Stage.FETCH, "w1")
    classification = Classification(category=Category.ANIME, width=4, height=2, aspect_ratio=2.0)
    message = TaskMessage(task_id="t1", input_url="a", output_url="b", submitted_at="x", classification=classification)
    status.start_stage(Stage.UPSCALE, "w3", message)  # classify's start was never recorded (its write failed)
    classify = status.subtask(Stage.CLASSIFY)
    assert classify.state == TaskState.SUCCESS and classify.completed_at
    assert status.classification == classification and status.state == TaskState.STARTED
    status.start_stage(Stage.UPLOAD, "w4", message.model_copy(update={"worker_type": "gpu"}))
    status.succeed({"ok": True})
    assert [s.state for s in status.subtasks] == [TaskState.SUCCESS] * 4 and status.worker_type == "gpu"
    with pytest.raises(TaskFinishedError):
        status.start_stage(Stage.UPSCALE, "w3")  # a late redelivery meets the ended task


def test_a_task_waits_in_a_queue_from_its_message_or_its_retry() -> None:
    stored = parse_time("2026-01-01T00:00:05.000Z")
    status = new_status()
    status.start_stage(Stage.FETCH, "w1")
    # The fetcher published the classify message but its end is not recorded: the task waits in classify.
    assert status.queued_since(Stage.CLASSIFY, stored) == stored
    assert status.queued_since(Stage.FETCH, stored) is None  # in a worker's hands
    status.start_stage(Stage.CLASSIFY, "w2", queued_since="2026-01-01T00:00:05.000Z")
    assert status.queued_since(Stage.CLASSIFY, stored) is None
    status.retry_stage(Stage.CLASSIFY, "busy", delay_s=0)
    retried = status.queued_since(Stage.CLASSIFY, stored)
    assert retried is not None and retried > stored  # waits from the retry's due time
    status.end(TaskState.REVOKED, "revoked")
    assert status.queued_since(Stage.CLASSIFY, stored) is None


def test_progress_never_goes_backwards() -> None:
    status = new_status()
    status.start_stage(Stage.FETCH, "w")
    status.start_stage(Stage.UPSCALE, "w")
    status.report_progress(Stage.UPSCALE, 0.5)
    high = status.progress
    status.retry_stage(Stage.UPSCALE, "boom")
    status.start_stage(Stage.UPSCALE, "w")  # a retried stage starts again at its beginning
    assert status.progress == high
    with pytest.raises(StageAlreadyDoneError):
        status.start_stage(Stage.FETCH, "w")  # a redelivered stage that already succeeded
    assert stage_progress(Stage.UPLOAD, 1.0) == 1.0


@pytest.mark.parametrize("end", ["succeed", "fail", "timeout", "revoke"])
def test_terminal_states_refuse_every_later_transition(end: str) -> None:
    status = new_status()
    if end == "succeed":
        status.succeed({})
    elif end == "fail":
        status.fail("boom", Stage.FETCH)
    else:
        status.end(TaskState.TIMEOUT if end == "timeout" else TaskState.REVOKED, end)
    for attempt in (
        lambda: status.start_stage(Stage.FETCH, "w"),
        lambda: status.start_stage(Stage.UPLOAD, "w"),
        lambda: status.report_progress(Stage.UPSCALE, 0.9),
        lambda: status.succeed({}),
        lambda: status.fail("again"),
    ):
        with pytest.raises(TaskFinishedError):
            attempt()


def test_attempts_are_counted_per_stage() -> None:
    status = new_status()
    status.start_stage(Stage.FETCH, "w1")
    status.retry_stage(Stage.FETCH, "connection reset")
    status.start_stage(Stage.FETCH, "w2")
    fetch = status.subtask(Stage.FETCH)
    assert fetch.attempts == 2 and fetch.worker_id == "w2"


def test_json_round_trip_ignores_unknown_fields() -> None:
    status = new_status()
    data = status.to_json().replace(b'"task_id"', b'"from_the_future":1,"task_id"', 1)
    assert TaskStatus.from_json(data) == status


def test_a_webhook_outcome_is_kept_for_its_own_run_only() -> None:
    status = TaskStatus.new("hooked")
    status.record_callback(1, "retrying", 1, "HTTP 503")
    status.record_callback(1, "delivered", 2, "HTTP 200")
    assert status.callback is not None
    assert (status.callback.state, status.callback.attempts, status.callback.last_result) == (
        "delivered",
        2,
        "HTTP 200",
    )
    status.reopen()  # replayed from the dead-letter stream: run 2 starts with no webhook outcome
    assert status.run == 2 and status.callback is None
    status.record_callback(1, "failed", 3, "HTTP 404")
    assert status.callback is None  # a late note about run 1 does not describe run 2
