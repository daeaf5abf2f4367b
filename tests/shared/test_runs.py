"""A task's runs: a work message carries its run, and a stage drops one of an earlier run (real server)."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import pytest
from nats.js.errors import NotFoundError

from services.uploader.worker import record_success
from shared.config import Settings
from shared.messages import Category, Classification, Stage, TaskMessage, UpscaleOptions
from shared.nats import Topology
from shared.runtime.deadletters import list_dead, start_new_run
from shared.runtime.errors import InputError, RetryableError
from shared.runtime.job import Job
from shared.runtime.stage import StageRunner
from shared.taskstate.status import StaleRunError, TaskState, TaskStatus
from shared.taskstate.store import TaskStore
from shared.wire import enqueue, message_id, message_run, work_stream, work_subject
from tests.shared.test_stage import run_until

PRIORITY = 5


def new_status(task_id: str) -> TaskStatus:
    return TaskStatus.new(task_id, priority=PRIORITY, input_url="http://x/in.png", output_url="s3://b/out.png")


def test_a_message_carries_its_run_in_one_small_field() -> None:
    status = new_status("runs")
    status.run = 3
    first = TaskMessage.first(status, UpscaleOptions(), None)
    assert first.run == 3
    assert TaskMessage.unpack(first.pack()).run == 3
    without = first.model_dump(mode="json", exclude_none=True, exclude={"run"})
    assert len(first.pack()) - len(msgpack.packb(without)) <= 5  # "run" and a small int


def test_a_message_packed_before_the_field_is_of_the_run_its_id_names() -> None:
    old = msgpack.packb({"task_id": "a", "input_url": "i", "output_url": "o", "submitted_at": "t"})
    headers = {"Nats-Msg-Id": message_id("a", Stage.CLASSIFY, 12)}
    assert TaskMessage.unpack(old, run_if_absent=message_run(headers)).run == 12
    assert TaskMessage.unpack(old).run == 1
    # The field, when there, wins over the id (they agree whenever a stage published the message).
    assert TaskMessage.unpack(TaskMessage.unpack(old).pack(), run_if_absent=12).run == 1


@pytest.mark.parametrize("headers", [None, {}, {"Nats-Msg-Id": "dead.TM_WORK_P5.7"}, {"Nats-Msg-Id": "a.fetch.runX"}])
def test_a_message_without_a_work_message_id_is_of_run_1(headers: dict[str, str] | None) -> None:
    assert message_run(headers) == 1


def test_a_start_for_an_earlier_run_changes_nothing_and_a_later_one_is_taken_as_current() -> None:
    status = new_status("runs")
    status.reopen()  # run 2, PENDING at fetch
    before = status.to_json()
    stale = TaskMessage.first(status, UpscaleOptions(), None).model_copy(update={"run": 1})
    with pytest.raises(StaleRunError) as raised:
        status.start_stage(Stage.CLASSIFY, "w", stale)
    assert (raised.value.message_run, raised.value.task_run) == (1, 2)
    assert status.to_json() == before
    status.start_stage(Stage.FETCH, "w", stale.model_copy(update={"run": 3}))
    assert status.state == TaskState.RECEIVED and status.run == 2


def finished(count: int) -> Callable[[StageRunner], bool]:
    """Until the runner is through with `count` messages, whatever became of them."""
    return lambda r: r.counters.succeeded + r.counters.failed + r.counters.retried + r.counters.dropped >= count


async def queued_runs(topology: Topology, stage: Stage, task_id: str) -> list[tuple[str, int]]:
    """(message id, run in the body) of each of the task's messages waiting for `stage`, oldest first."""
    found: list[tuple[str, int]] = []
    seq = 1
    while True:
        try:
            raw = await topology.js.get_msg(
                work_stream(PRIORITY), seq=seq, next=True, subject=work_subject(PRIORITY, stage, task_id)
            )
        except NotFoundError:
            return found
        found.append(((raw.headers or {})["Nats-Msg-Id"], TaskMessage.unpack(raw.data or b"").run))
        seq = (raw.seq or seq) + 1


async def end_and_start_again(topology: Topology, store: TaskStore, task_id: str) -> TaskStatus:
    """A client revokes the task and retries it (POST .../retry): run 2, PENDING at fetch, its message queued."""
    await store.update(task_id, lambda s: s.end(TaskState.REVOKED, "revoked by a client"))
    return await start_new_run(topology.js, store, task_id)


async def test_a_leftover_message_of_the_ended_run_is_dropped_and_the_new_run_goes_on(
    topology: Topology, settings: Settings
) -> None:
    """Run 1's fetcher finished just before the task was revoked; its classify message is stored after the
    retry's purge. The classifier must not start run 2 from it (fetch recorded done, stale classification)."""
    store = TaskStore.of(topology)
    created = new_status("leftover")
    revision = await store.create(created)
    run1 = TaskMessage.first(created, UpscaleOptions(), (created.to_json(), revision))
    await end_and_start_again(topology, store, "leftover")
    leftover = run1.model_copy(
        update={"classification": Classification(category=Category.PHOTO, width=4, height=4, aspect_ratio=1.0)}
    )
    await enqueue(topology.js, leftover, Stage.CLASSIFY, 1)
    before = await topology.tasks.get("leftover")
    seen: list[tuple[Stage, int]] = []

    async def handle(job: Job) -> TaskMessage:
        seen.append((job.stage, job.task.run))
        return job.task

    classifier = await run_until(topology, settings, handle, stage=Stage.CLASSIFY, done=finished(1))
    assert (classifier.counters.dropped, seen) == (1, []), "run 1's message was worked on as run 2's"
    after = await topology.tasks.get("leftover")
    assert (after.revision, after.value) == (before.revision, before.value)  # not a single write
    assert await queued_runs(topology, Stage.CLASSIFY, "leftover") == []  # acked
    assert await list_dead(topology.js) == []

    # Run 2 goes through both stages as usual, its messages carrying run 2.
    await run_until(topology, settings, handle, stage=Stage.FETCH, done=lambda r: r.counters.succeeded == 1)
    assert await queued_runs(topology, Stage.CLASSIFY, "leftover") == [(message_id("leftover", Stage.CLASSIFY, 2), 2)]
    classifier = await run_until(
        topology, settings, handle, stage=Stage.CLASSIFY, done=lambda r: r.counters.succeeded == 1
    )
    assert seen == [(Stage.FETCH, 2), (Stage.CLASSIFY, 2)] and classifier.counters.dropped == 0
    status = await store.get("leftover")
    assert status is not None and (status.run, status.state, status.classification) == (2, TaskState.STARTED, None)
    assert [(s.name, s.state, s.attempts) for s in status.subtasks] == [
        (Stage.FETCH, TaskState.SUCCESS, 1), (Stage.CLASSIFY, TaskState.STARTED, 1),
        (Stage.UPSCALE, TaskState.PENDING, 0), (Stage.UPLOAD, TaskState.PENDING, 0),
    ]  # fmt: skip


@pytest.mark.parametrize("outcome", ["success", "failure", "retry"])
async def test_a_run_ended_and_started_again_while_its_handler_works_leaves_the_new_run_alone(
    topology: Topology, settings: Settings, outcome: str
) -> None:
    """Whatever run 1's handler comes to, run 2 (queued meanwhile) is not failed, retried or skipped ahead."""
    store = TaskStore.of(topology)
    status = new_status("overtaken")
    await store.create(status)
    await enqueue(topology.js, TaskMessage.first(status, UpscaleOptions(), None), Stage.FETCH, 1)
    runs: list[int] = []

    async def handle(job: Job) -> TaskMessage:
        runs.append(job.task.run)
        if len(runs) == 1:  # run 1's fetch
            await end_and_start_again(topology, store, "overtaken")
            if outcome == "failure":
                raise InputError("input URL returned HTTP 404")
            if outcome == "retry":
                raise RetryableError("HTTP 503")
        return job.task

    fetcher = await run_until(topology, settings, handle, stage=Stage.FETCH, done=finished(2))
    assert runs == [1, 2]
    assert (fetcher.counters.failed, fetcher.counters.retried) == (0, 0)
    assert fetcher.counters.dropped == (0 if outcome == "success" else 1)
    assert await list_dead(topology.js) == []
    expected = [(message_id("overtaken", Stage.CLASSIFY, 2), 2)]
    if outcome == "success":  # published by run 1 as run 1's, after the retry's purge
        expected.insert(0, (message_id("overtaken", Stage.CLASSIFY, 1), 1))
    assert await queued_runs(topology, Stage.CLASSIFY, "overtaken") == expected
    classifier = await run_until(topology, settings, handle, stage=Stage.CLASSIFY, done=finished(len(expected)))
    assert classifier.counters.dropped == len(expected) - 1 and classifier.counters.succeeded == 1
    after = await store.get("overtaken")
    assert after is not None and (after.run, after.state, after.error) == (2, TaskState.STARTED, None)
    assert [(s.state, s.attempts, s.error) for s in after.subtasks[:2]] == [
        (TaskState.SUCCESS, 1, None), (TaskState.STARTED, 1, None),
    ]  # fmt: skip


def test_an_earlier_runs_upload_cannot_mark_the_new_run_done() -> None:
    status = new_status("runs")
    status.reopen()  # run 2
    before = status.to_json()
    leftover = TaskMessage.first(status, UpscaleOptions(), None).model_copy(update={"run": 1})
    with pytest.raises(StaleRunError):
        record_success(status, leftover)
    assert status.to_json() == before


async def test_an_earlier_runs_progress_is_refused_and_leaves_the_new_run_alone(topology: Topology) -> None:
    store = TaskStore.of(topology)
    status = new_status("progress-runs")
    await store.create(status)
    message = TaskMessage.first(status, UpscaleOptions(), None)
    started = await store.update(status.task_id, lambda s: s.start_stage(Stage.FETCH, "w", message))
    job = Job(task=message, status=started, attempt=1, stage=Stage.FETCH, store=store)
    again = await end_and_start_again(topology, store, status.task_id)
    with pytest.raises(StaleRunError):
        await job.report_progress(0.5, min_interval_s=0)
    assert (await store.get(status.task_id)).to_json() == again.to_json()
