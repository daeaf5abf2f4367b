"""POST /api/v1/tasks/{id}/retry on the API alone (no stage runs, so a retried task stays queued): a new
run of an ended task, decided by compare-and-set, its dead letters gone with it. The runs that then
fail or succeed for real are in tests/e2e/test_retry.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from shared.messages import Stage, TaskMessage
from shared.runtime.deadletters import dead_letter, dead_letters_of, replay_dead
from shared.taskstate.status import TaskStatus
from shared.taskstate.store import TaskStore
from shared.wire import TASKS_BUCKET, message_id, task_work_filter, work_stream
from tests.api.conftest import KEY_1, SUBMISSION, api_only
from tests.sse import server_events
from tests.system import System

PRIORITY = 7


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with api_only(tmp_path_factory.mktemp("retry")) as running:
        yield running


@pytest.fixture
async def api(system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as client:
        yield client


@pytest.fixture
async def nc(system: System) -> AsyncIterator[nats.NATS]:
    connection = await nats.connect(system.nats_url)
    yield connection
    await connection.close()


async def store_of(nc: nats.NATS) -> TaskStore:
    return TaskStore(await nc.jetstream().key_value(TASKS_BUCKET), nc.jetstream(), nc)


async def submit(api: httpx.AsyncClient) -> str:
    body = {**SUBMISSION, "priority": PRIORITY, "kwargs": {"outscale": 2, "output_format": "webp"}}
    response = await api.post("/api/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


async def revoked(api: httpx.AsyncClient) -> str:
    task_id = await submit(api)
    assert (await api.post(f"/api/v1/tasks/{task_id}/revoke")).status_code == 200
    return task_id


async def queued(js: JetStreamContext, task_id: str) -> list[RawStreamMsg]:
    """The task's messages in its work queue, oldest first (direct gets, no consumer)."""
    found: list[RawStreamMsg] = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(
                work_stream(PRIORITY), seq=seq, next=True, subject=task_work_filter(PRIORITY, task_id)
            )
        except NotFoundError:
            return found
        found.append(raw)
        seq = (raw.seq or seq) + 1


async def write_dead_letter(js: JetStreamContext, task_id: str, origin_seq: int) -> int:
    """A dead letter for the task's fetch, as a stage writes one after its FAILURE write; its seq."""
    work = TaskMessage(
        task_id=task_id, input_url="https://example.com/in.jpg", output_url="s3://b/o.png", submitted_at="2024-01-01Z"
    )
    await dead_letter(
        js,
        work.pack(),
        None,
        stage=Stage.FETCH,
        task_id=task_id,
        error="input URL returned HTTP 404",
        origin_subject=f"work message {origin_seq}",
        origin_stream=work_stream(PRIORITY),
        origin_seq=origin_seq,
        attempts=1,
    )
    [dead] = [d for d in await dead_letters_of(js, task_id) if d.headers["Tm-Origin-Seq"] == str(origin_seq)]
    return dead.seq


async def test_a_revoked_task_runs_again_as_run_2_from_the_first_stage(api: httpx.AsyncClient, nc: nats.NATS) -> None:
    task_id = await revoked(api)
    before = (await api.get(f"/api/v1/tasks/{task_id}")).json()
    assert (await queued(nc.jetstream(), task_id)) == []

    retried = await api.post(f"/api/v1/tasks/{task_id}/retry")
    assert retried.status_code == 202, retried.text
    body = retried.json()
    assert body == (await api.get(f"/api/v1/tasks/{task_id}")).json()
    assert (body["task_id"], body["run"], body["state"], body["progress"]) == (task_id, 2, "PENDING", 0.0)
    assert body["error"] is None and body["completed_at"] is None and body["received_at"] is None
    for kept in ("submitted_at", "input_url", "output_url", "priority", "kwargs"):
        assert body[kept] == before[kept], kept
    assert [(s["name"], s["state"], s["attempts"]) for s in body["subtasks"]] == [
        ("fetch", "PENDING", 0), ("classify", "PENDING", 0), ("upscale", "PENDING", 0), ("upload", "PENDING", 0),
    ]  # fmt: skip
    assert body["subtasks"][0]["queued_at"]

    # One message, for the first stage, as run 2, with the submitted URLs and options.
    [raw] = await queued(nc.jetstream(), task_id)
    assert (raw.headers or {})["Nats-Msg-Id"] == message_id(task_id, Stage.FETCH, 2)
    message = TaskMessage.unpack(raw.data or b"")
    assert (message.input_url, message.output_url) == (before["input_url"], before["output_url"])
    assert (message.options.outscale, message.options.output_format) == (2, "webp")
    assert message.input_image is None and message.stored_objects == []
    assert message.state_hint and TaskStatus.from_json(message.state_hint.encode()).run == 2  # the fetcher's CAS base

    # A follower sees the first run end and the task go PENDING again.
    async with asyncio.timeout(30), api.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
        events = server_events(response)
        seen = [
            (e.data["run"], e.data["state"], e.data.get("previous_state"))
            for e in [await anext(events) for _ in range(3)]
        ]
    assert seen == [(1, "PENDING", None), (1, "REVOKED", "PENDING"), (2, "PENDING", "REVOKED")]


async def test_a_task_that_has_not_ended_or_succeeded_is_409_naming_its_state(
    api: httpx.AsyncClient, nc: nats.NATS
) -> None:
    store = await store_of(nc)
    task_id = await submit(api)
    for state, step in (
        ("PENDING", None),
        ("RECEIVED", lambda s: s.start_stage(Stage.FETCH, "test-worker")),
        ("STARTED", lambda s: s.start_stage(Stage.CLASSIFY, "test-worker")),
        ("SUCCESS", lambda s: s.succeed({"output_url": "s3://bucket/out.png"})),
    ):
        if step is not None:
            await store.update(task_id, step)  # what the stages write
        response = await api.post(f"/api/v1/tasks/{task_id}/retry")
        assert response.status_code == 409, response.text
        assert response.json()["detail"] == (
            f"Task {task_id} is {state} (run 1); only a FAILURE, TIMEOUT or REVOKED task can be retried"
        )
        after = (await api.get(f"/api/v1/tasks/{task_id}")).json()
        assert (after["state"], after["run"]) == (state, 1)
    assert len(await queued(nc.jetstream(), task_id)) == 1  # the submission's, nothing added


async def test_unknown_tasks_and_other_spellings_of_ids_are_404(api: httpx.AsyncClient) -> None:
    task_id = await revoked(api)
    for unknown in (str(uuid.uuid4()), task_id.upper(), uuid.UUID(task_id).hex, "not-a-task"):
        response = await api.post(f"/api/v1/tasks/{unknown}/retry")
        assert response.status_code == 404, unknown
        assert response.json()["detail"] == f"Task {unknown} not found"
    assert (await api.get(f"/api/v1/tasks/{task_id}")).json()["run"] == 1


async def test_two_retries_at_once_start_one_run(api: httpx.AsyncClient, nc: nats.NATS) -> None:
    task_id = await revoked(api)
    answers = await asyncio.gather(*(api.post(f"/api/v1/tasks/{task_id}/retry") for _ in range(4)))
    assert sorted(a.status_code for a in answers) == [202, 409, 409, 409], [a.text for a in answers]
    for lost in (a for a in answers if a.status_code == 409):
        # Read before the winner's write (its run was retried already) or after it (PENDING now).
        assert lost.json()["detail"] in (
            f"Task {task_id} was retried already: run 2 is PENDING",
            f"Task {task_id} is PENDING (run 2); only a FAILURE, TIMEOUT or REVOKED task can be retried",
        )
    assert (await api.get(f"/api/v1/tasks/{task_id}")).json()["run"] == 2
    [raw] = await queued(nc.jetstream(), task_id)
    assert (raw.headers or {})["Nats-Msg-Id"] == message_id(task_id, Stage.FETCH, 2)


async def test_a_failed_tasks_dead_letter_goes_with_its_retry_and_a_late_one_starts_no_other_run(
    api: httpx.AsyncClient, nc: nats.NATS
) -> None:
    js, store = nc.jetstream(), await store_of(nc)
    task_id = await submit(api)
    [work] = await queued(js, task_id)
    # What a fetcher does with an input that is not there: FAILURE, a dead letter, the message acked.
    await store.update(task_id, lambda s: s.fail("fetch: input URL returned HTTP 404", Stage.FETCH))
    await write_dead_letter(js, task_id, origin_seq=work.seq or 0)
    await js.delete_msg(work_stream(PRIORITY), work.seq or 0)

    assert (await api.post(f"/api/v1/tasks/{task_id}/retry")).status_code == 202
    assert await dead_letters_of(js, task_id) == []

    # A stage that stalled between its FAILURE write and its dead letter writes it after the retry:
    # replaying it is refused while run 2 goes on (and once run 2 ends, its own letter is the one to use).
    late = await write_dead_letter(js, task_id, origin_seq=(work.seq or 0) + 1000)
    with pytest.raises(LookupError, match=f"task {task_id} is PENDING \\(run 2\\), not FAILURE"):
        await replay_dead(js, store, late)
    assert (await api.get(f"/api/v1/tasks/{task_id}")).json()["run"] == 2
    assert len(await queued(js, task_id)) == 1


async def test_retry_needs_a_key_and_documents_its_answers(secured: System) -> None:
    async with httpx.AsyncClient(base_url=secured.api_url, timeout=30) as api:
        assert (await api.post(f"/api/v1/tasks/{uuid.uuid4()}/retry")).status_code == 401
        response = await api.post(f"/api/v1/tasks/{uuid.uuid4()}/retry", headers={"X-API-Key": KEY_1})
        assert response.status_code == 404
        schema = (await api.get("/openapi.json")).json()
    answers = schema["paths"]["/api/v1/tasks/{task_id}/retry"]["post"]["responses"]
    assert set(answers) == {"202", "401", "404", "409", "429", "503"}
    assert answers["202"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TaskStatus"}
