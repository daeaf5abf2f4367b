"""The stage loop's contract with JetStream (ack, nak with backoff, failure, drop), on a real server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from nats.js.errors import ObjectNotFoundError

from shared.blobs import write_blob
from shared.config import Settings
from shared.messages import Stage, TaskMessage
from shared.nats import Topology
from shared.runtime.deadletters import list_dead
from shared.runtime.errors import InputError, RetryableError
from shared.runtime.job import Job
from shared.runtime.puller import PriorityPuller
from shared.runtime.stage import StageRunner, backoff_s
from shared.taskstate.status import TaskStatus, parse_time
from shared.taskstate.store import TaskStore
from shared.wire import EVENTS_SUBJECTS, input_object, work_stream, work_subject
from tests.shared.test_events import ended_without_events, stored_terminal_events


async def queue_task(topology: Topology, task_id: str, priority: int = 5) -> TaskStore:
    store = TaskStore.of(topology)
    await store.create(TaskStatus.new(task_id, priority=priority))
    message = TaskMessage(task_id=task_id, priority=priority, input_url="i", output_url="o", submitted_at="t")
    await topology.js.publish(work_subject(priority, Stage.FETCH, task_id), message.pack())
    return store


async def run_until(
    topology: Topology, settings: Settings, handler: Callable[[Job], Awaitable[TaskMessage | None]],
    done: Callable[[StageRunner], bool], timeout_s: float = 15, stage: Stage = Stage.FETCH,
) -> StageRunner:  # fmt: skip
    runner = StageRunner(stage, handler, topology, settings, f"{stage.value}-worker")
    running = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(timeout_s):
            while not done(runner):
                await asyncio.sleep(0.01)
    finally:
        runner.stop()
        await asyncio.wait_for(running, timeout=10)
    return runner


async def queued(topology: Topology, priority: int = 5) -> dict[str, int]:
    info = await topology.js.stream_info(work_stream(priority), subjects_filter=">")
    return dict(info.state.subjects or {})


async def test_success_records_the_stage_publishes_the_next_and_acks(topology: Topology, settings: Settings) -> None:
    store = await queue_task(topology, "ok")

    async def handle(job: Job) -> TaskMessage:
        return job.task

    await run_until(topology, settings, handle, lambda r: r.counters.succeeded == 1)
    status = await store.get("ok")
    # One state write per stage: the fetch's start. Its end is written by the classifier's start.
    assert status is not None and status.state == "RECEIVED"
    assert status.subtask(Stage.FETCH).state == "STARTED" and status.subtask(Stage.FETCH).attempts == 1
    assert await queued(topology) == {"tm.work.p5.classify.ok": 1}


async def test_permanent_error_fails_the_task_once_and_publishes_its_event(
    topology: Topology, settings: Settings
) -> None:
    store = await queue_task(topology, "bad")
    events = await topology.nc.subscribe(EVENTS_SUBJECTS)
    calls = 0

    async def handle(job: Job) -> TaskMessage:
        nonlocal calls
        calls += 1
        raise InputError("input URL returned HTTP 404")

    await run_until(topology, settings, handle, lambda r: r.counters.failed == 1)
    status = await store.get("bad")
    assert status is not None and status.state == "FAILURE" and status.error == "input URL returned HTTP 404"
    assert calls == 1
    assert await queued(topology) == {}
    [dead] = await list_dead(topology.js)
    assert (dead.task_id, dead.stage, dead.error, dead.attempts) == (
        "bad",
        Stage.FETCH,
        "input URL returned HTTP 404",
        1,
    )
    assert dead.origin_subject == "tm.work.p5.fetch.bad"
    assert dead.message is not None and dead.message.task_id == "bad"
    event = await events.next_msg(timeout=5)
    assert event.subject == "task.events.image_super_resolution_pipeline.failure"
    assert json.loads(event.data)["task_id"] == "bad"


async def test_retryable_error_is_retried_with_backoff_then_succeeds(topology: Topology, settings: Settings) -> None:
    store = await queue_task(topology, "flaky")
    attempts: list[int] = []

    async def handle(job: Job) -> TaskMessage:
        attempts.append(job.attempt)
        if len(attempts) < 3:
            raise RetryableError("HTTP 503")
        return job.task

    runner = await run_until(topology, settings, handle, lambda r: r.counters.succeeded == 1)
    assert attempts == [1, 2, 3]
    assert runner.counters.retried == 2
    status = await store.get("flaky")
    assert status is not None and status.subtask(Stage.FETCH).attempts == 3


async def test_retries_are_bounded_and_the_last_error_is_kept(topology: Topology, settings: Settings) -> None:
    store = await queue_task(topology, "down")

    async def handle(job: Job) -> TaskMessage:
        raise RetryableError(f"connection refused (attempt {job.attempt})")

    await run_until(topology, settings, handle, lambda r: r.counters.failed == 1)
    status = await store.get("down")
    assert status is not None and status.state == "FAILURE"
    assert status.error == "connection refused (attempt 3) (gave up after 3 attempts)"  # max_retries=2
    assert await queued(topology) == {}


async def test_a_bug_in_a_handler_is_retried_not_fatal(topology: Topology, settings: Settings) -> None:
    await queue_task(topology, "bug")
    seen = 0

    async def handle(job: Job) -> TaskMessage:
        nonlocal seen
        seen += 1
        if seen == 1:
            raise ZeroDivisionError("oops")
        return job.task

    runner = await run_until(topology, settings, handle, lambda r: r.counters.succeeded == 1)
    assert runner.counters.retried == 1


async def test_deleted_task_is_dropped_without_running(topology: Topology, settings: Settings) -> None:
    store = await queue_task(topology, "gone")
    await store.delete("gone")

    async def handle(job: Job) -> TaskMessage:
        raise AssertionError("must not run")

    await run_until(topology, settings, handle, lambda r: r.counters.dropped == 1)
    assert await queued(topology) == {}


async def test_a_stalled_handler_is_cancelled_and_retried(topology: Topology, settings: Settings) -> None:
    store = await queue_task(topology, "stuck")
    attempts: list[int] = []

    async def handle(job: Job) -> TaskMessage:
        attempts.append(job.attempt)
        if job.attempt == 1:
            await asyncio.sleep(3600)  # hangs without reporting progress
        return job.task

    fast = settings.model_copy(update={"stall_timeout_s": 0.5})
    runner = await run_until(topology, fast, handle, lambda r: r.counters.succeeded == 1)
    assert attempts == [1, 2] and runner.counters.retried == 1
    status = await store.get("stuck")
    assert status is not None and status.subtask(Stage.FETCH).attempts == 2


async def test_progress_keeps_a_slow_handler_alive_past_ack_wait(topology: Topology, settings: Settings) -> None:
    await queue_task(topology, "slow")
    attempts: list[int] = []

    async def handle(job: Job) -> TaskMessage:
        attempts.append(job.attempt)
        for step in range(12):  # 3 s in all, with ack_wait 1 s and a 0.5 s stall limit
            await asyncio.sleep(0.25)
            await job.report_progress(step / 12)
        return job.task

    quick = settings.model_copy(update={"ack_wait_s": 1, "stall_timeout_s": 0.5})
    runner = await run_until(topology, quick, handle, lambda r: r.counters.succeeded == 1)
    assert attempts == [1] and runner.counters.retried == 0


async def test_shutdown_hands_back_work_past_the_grace_period(topology: Topology, settings: Settings) -> None:
    await queue_task(topology, "long")
    started = asyncio.Event()

    async def handle(job: Job) -> TaskMessage:
        started.set()
        while True:
            await asyncio.sleep(0.05)
            job.touch()

    runner = StageRunner(Stage.FETCH, handle, topology, settings.model_copy(update={"shutdown_grace_s": 0.3}), "w")
    running = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), timeout=10)
    runner.stop()
    await asyncio.wait_for(running, timeout=10)
    assert runner.counters.handed_back == 1
    # Handed back, not lost: the message is available again at once.
    puller = PriorityPuller(topology.nc, Stage.FETCH)
    await puller.start()
    msg = await asyncio.wait_for(puller.next(), timeout=5)
    assert msg is not None and msg.metadata.num_delivered == 2
    await puller.close()


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    for attempt, step in [(1, 1.0), (2, 2.0), (3, 4.0)]:
        assert step / 2 <= backoff_s(attempt, 1.0) <= step
    assert backoff_s(30, 1.0) <= 30.0


@pytest.mark.parametrize("priority", [0, 10])
async def test_edge_priorities_flow(topology: Topology, settings: Settings, priority: int) -> None:
    await queue_task(topology, f"p{priority}", priority=priority)

    async def handle(job: Job) -> TaskMessage:
        return job.task

    await run_until(topology, settings, handle, lambda r: r.counters.succeeded == 1)
    assert await queued(topology, priority) == {f"tm.work.p{priority}.classify.p{priority}": 1}


async def run_then_redeliver(
    topology: Topology, settings: Settings, task_id: str, before_redelivery: Callable[[TaskStore], Awaitable[object]],
    done: Callable[[StageRunner], bool],
) -> tuple[TaskStore, int, StageRunner]:  # fmt: skip
    """Run the fetch of a queued task, then deliver its message again as another process would see it
    (the worker died after publishing, before its ack); (store, handler runs, the second runner)."""
    store = await queue_task(topology, task_id)
    runs = 0

    async def handle(job: Job) -> TaskMessage:
        nonlocal runs
        runs += 1
        return job.task

    await run_until(topology, settings, handle, lambda r: r.counters.succeeded == 1)
    await before_redelivery(store)
    message = TaskMessage(task_id=task_id, input_url="i", output_url="o", submitted_at="t")
    await topology.js.publish(work_subject(5, Stage.FETCH, task_id), message.pack())
    runner = await run_until(topology, settings, handle, done)
    return store, runs, runner


async def test_a_redelivered_message_of_a_finished_stage_does_not_run_again(
    topology: Topology, settings: Settings
) -> None:
    async def next_stage_took_it(store: TaskStore) -> None:
        await store.update("twice", lambda s: s.start_stage(Stage.CLASSIFY, "classifier"))

    store, runs, runner = await run_then_redeliver(
        topology, settings, "twice", next_stage_took_it, lambda r: r.counters.dropped == 1
    )
    assert runs == 1 and runner.counters.succeeded == 0
    assert await queued(topology) == {"tm.work.p5.classify.twice": 1}
    status = await store.get("twice")
    assert status is not None and status.subtask(Stage.FETCH).attempts == 1


async def test_a_redelivery_before_the_next_stage_started_runs_again_without_a_duplicate(
    topology: Topology, settings: Settings
) -> None:
    # Nothing in the state says the fetch is done yet (the classifier's start would): another process
    # runs it again, and the stream drops its publish as a duplicate (same message id).
    async def nothing(store: TaskStore) -> None:
        pass

    store, runs, _ = await run_then_redeliver(topology, settings, "again", nothing, lambda r: r.counters.succeeded == 1)
    assert runs == 2
    assert await queued(topology) == {"tm.work.p5.classify.again": 1}
    status = await store.get("again")
    assert status is not None and status.subtask(Stage.FETCH).attempts == 2


async def test_a_redelivery_republishes_the_event_its_worker_died_before_publishing(
    topology: Topology, settings: Settings
) -> None:
    store = await queue_task(topology, "ended")
    # The worker wrote the terminal state, then died before publishing the event (simulated: the
    # state is written directly, no event goes out); its message is then redelivered.
    status, revision = await store.get_with_revision("ended")  # type: ignore[misc]
    status.succeed({"ok": True})
    await topology.tasks.update("ended", status.to_json(), last=revision)
    events = await topology.nc.subscribe(EVENTS_SUBJECTS)

    async def handle(job: Job) -> TaskMessage:
        raise AssertionError("must not run")

    await run_until(topology, settings, handle, lambda r: r.counters.dropped == 1)
    event = await events.next_msg(timeout=5)
    assert event.subject == "task.events.image_super_resolution_pipeline.success"
    assert json.loads(event.data)["task_id"] == "ended"


async def test_a_redelivery_while_this_process_still_runs_the_task_waits_instead_of_running_twice(
    topology: Topology, settings: Settings
) -> None:
    """A broker in failover misses in-progress acks, the ack wait runs out and the message comes
    back to the process still working on it (the fault test saw two uploads of one output). The
    second delivery is a second message for the same task and stage here, taken while the first runs."""
    store = await queue_task(topology, "busy")
    first_running, release = asyncio.Event(), asyncio.Event()
    runs = 0

    async def handle(job: Job) -> TaskMessage:
        nonlocal runs
        runs += 1
        first_running.set()
        while not release.is_set():
            await asyncio.sleep(0.05)
            job.touch()
        return job.task

    runner = StageRunner(Stage.FETCH, handle, topology, settings.model_copy(update={"concurrency": 2}), "w")
    running = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(first_running.wait(), timeout=10)
        message = TaskMessage(task_id="busy", input_url="i", output_url="o", submitted_at="t")
        await topology.js.publish(work_subject(5, Stage.FETCH, "busy"), message.pack())
        async with asyncio.timeout(10):
            while runner.counters.waited_for_own_run == 0 and runs == 1:
                await asyncio.sleep(0.01)
        assert runs == 1, "the second delivery ran beside the first"
        release.set()
        async with asyncio.timeout(10):
            while runner.counters.succeeded + runner.counters.dropped < 2:
                await asyncio.sleep(0.01)
    finally:
        runner.stop()
        await asyncio.wait_for(running, timeout=10)
    assert runs == 1 and runner.counters.succeeded == 1 and runner.counters.dropped == 1
    assert await queued(topology) == {"tm.work.p5.classify.busy": 1}
    status = await store.get("busy")
    assert status is not None and status.subtask(Stage.FETCH).attempts == 1


async def test_a_redelivery_that_finds_its_task_ended_without_events_restores_them(
    topology: Topology, settings: Settings
) -> None:
    """The writer of the terminal state was killed before its publishes and clean-up: the message comes
    back, and the worker that drops it publishes the missing event and removes the task's objects."""
    await queue_task(topology, "orphan")
    await write_blob(topology.blobs, input_object("orphan"), b"input bytes")
    await ended_without_events(topology, "orphan")
    calls = 0

    async def handle(job: Job) -> TaskMessage:
        nonlocal calls
        calls += 1
        return job.task

    await run_until(topology, settings, handle, lambda r: r.counters.dropped == 1)
    assert calls == 0
    assert await stored_terminal_events(topology) == 1
    with pytest.raises(ObjectNotFoundError):
        await topology.blobs.get_info(input_object("orphan"))
    assert await queued(topology) == {}


async def test_a_server_chosen_delay_is_capped(topology: Topology, settings: Settings) -> None:
    """A RetryableError asking for a year (Retry-After) waits TM_RETRY_MAX_DELAY_S at most."""
    store = await queue_task(topology, "busy")
    capped = settings.model_copy(update={"retry_max_delay_s": 1.0})

    async def handle(job: Job) -> TaskMessage:
        raise RetryableError("input URL returned HTTP 503 (asked to retry after 31536000 s)", 31_536_000)

    before = datetime.now(UTC)
    await run_until(topology, capped, handle, lambda r: r.counters.retried == 1)
    status = await store.get("busy")
    assert status is not None
    queued_at = status.subtask(Stage.FETCH).queued_at
    assert queued_at is not None and parse_time(queued_at) - before <= timedelta(seconds=1.5)


async def queued_message(topology: Topology, stage: Stage, task_id: str, priority: int = 5) -> TaskMessage:
    raw = await topology.js.get_last_msg(work_stream(priority), work_subject(priority, stage, task_id))
    return TaskMessage.unpack(raw.data or b"")


@pytest.mark.parametrize("hint", ["none", "current", "stale"])
async def test_the_state_a_stage_wrote_rides_to_the_next_and_a_stale_one_is_read_afresh(
    topology: Topology, settings: Settings, hint: str
) -> None:
    store = TaskStore.of(topology)
    created = TaskStatus.new("hint")
    revision = await store.create(created)
    if hint != "none":  # what the API hands the first stage; "stale": the entry changed since
        if hint == "stale":
            await store.update("hint", lambda s: s.report_progress(Stage.FETCH, 0.5))
        message = TaskMessage(
            task_id="hint", input_url="i", output_url="o", submitted_at="t",
            state_hint=created.to_json().decode(), state_revision=revision,
        )  # fmt: skip
    else:
        message = TaskMessage(task_id="hint", input_url="i", output_url="o", submitted_at="t")
    await topology.js.publish(work_subject(5, Stage.FETCH, "hint"), message.pack())

    async def handle(job: Job) -> TaskMessage:
        return job.task

    await run_until(topology, settings, handle, lambda r: r.counters.succeeded == 1)
    entry = await topology.tasks.get("hint")
    status = TaskStatus.from_json(entry.value or b"")
    assert status.subtask(Stage.FETCH).attempts == 1 and status.state == "RECEIVED"
    assert status.progress == (0.05 if hint == "stale" else 0.0)  # the stale hint's progress was not lost
    handed = await queued_message(topology, Stage.CLASSIFY, "hint")
    assert handed.state_revision == entry.revision and handed.state_hint == (entry.value or b"").decode()
