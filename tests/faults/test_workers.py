"""Worker faults (issue #3, parts 1-5 and 7): workers SIGKILLed mid-stage (the upscaler mid-inference
included), every stage stopped gracefully mid-run, tasks nobody takes, and revocations mid-run.

Each scenario submits TASKS tasks through the API while the fault happens and then checks every task
(see tests/faults/harness.py): exactly one terminal state, the expected one; SUCCESS with exactly one
output; nothing left in the work queues.
"""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import nats
import pytest

from shared.wire import TASKS_BUCKET
from tests.faults.harness import (
    TASKS,
    Outcome,
    Run,
    assert_nothing_duplicated,
    assert_nothing_lost,
    assert_one_terminal_event_each,
    run_scenario,
)
from tests.servers import StaticHTTPServer
from tests.system import STAGE_SERVICES, System

pytestmark = pytest.mark.faults
STAGE_OF = {"fetcher": "fetch", "classifier": "classify", "uploader": "upload"}


async def stage_started(nats_url: str, stage: str, timeout_s: float = 60) -> str:
    """Until some task's `stage` is running in a worker (watching task-state writes); its id."""
    nc = await nats.connect(nats_url)
    try:
        updates = await nc.subscribe(f"$KV.{TASKS_BUCKET}.*")
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await updates.next_msg(timeout=timeout_s)
                if not msg.data:
                    continue
                status = json.loads(msg.data)
                if any(s["name"] == stage and s["state"] == "STARTED" for s in status["subtasks"]):
                    return status["task_id"]
    finally:
        await nc.close()


def kill(system: System, service: str) -> None:
    """SIGKILL a stage process (no clean-up of any kind) and start a fresh one in its place."""
    system.processes[service].send_signal(signal.SIGKILL)
    system.processes[service].wait(timeout=10)
    system.spawn(service)


def check(outcome: Outcome) -> None:
    assert_nothing_lost(outcome)
    assert_nothing_duplicated(outcome)
    assert_one_terminal_event_each(outcome)


async def test_stage_workers_killed_mid_stage(make_system, http_server: StaticHTTPServer) -> None:
    """SIGKILL the fetcher, then the classifier, then the uploader while they hold messages; a fresh
    process replaces each. Their messages come back after the ack wait and finish exactly once."""
    system = make_system()
    await system.start("api", *STAGE_SERVICES)
    run = Run("C stage workers SIGKILLed", system, [system.nats_url], http_server)

    async def fault() -> None:
        for quarter, (service, stage) in enumerate(STAGE_OF.items(), start=1):
            await run.accepted(quarter * TASKS // 4)
            await stage_started(system.nats_url, stage)
            await asyncio.to_thread(kill, system, service)

    check(await run_scenario(run, fault, restarts=True))


async def test_upscaler_killed_mid_inference(make_system, http_server: StaticHTTPServer) -> None:
    """SIGKILL the upscaler twice while it runs the real network on a tile, restarting it each time."""
    system = make_system(TM_TILE="32")
    await system.start("api", *STAGE_SERVICES)
    run = Run("D upscaler SIGKILLed mid-inference", system, [system.nats_url], http_server)
    run.kwargs = {"model": "realesr-animevideov3"}

    async def fault() -> None:
        for third in (1, 2):
            await run.accepted(third * TASKS // 3)
            await stage_started(system.nats_url, "upscale")
            await asyncio.to_thread(kill, system, "upscaler")

    check(await run_scenario(run, fault, size=(48, 40), restarts=True))


async def test_every_stage_stopped_gracefully_mid_run(make_system, http_server: StaticHTTPServer) -> None:
    """SIGTERM all four stages at once a third of the way through (each finishes or hands back what
    it holds, then exits 0), and start them again."""
    system = make_system(TM_SHUTDOWN_GRACE_S="2")
    await system.start("api", *STAGE_SERVICES)
    run = Run("E every stage SIGTERMed and restarted", system, [system.nats_url], http_server)
    exit_codes: list[int | None] = []

    async def fault() -> None:
        await run.accepted(TASKS // 3)
        stopping = [system.processes[s] for s in STAGE_SERVICES]
        await asyncio.to_thread(system.stop, *STAGE_SERVICES)
        exit_codes.extend(p.returncode for p in stopping)
        await system.start(*STAGE_SERVICES)

    check(await run_scenario(run, fault, restarts=True))
    assert exit_codes == [0, 0, 0, 0]


async def test_tasks_nobody_takes_time_out(make_system, http_server: StaticHTTPServer) -> None:
    """No fetcher runs: every task becomes TIMEOUT after TM_QUEUE_TIMEOUT_S and leaves its queue, so
    the stages started afterwards never run one."""
    system = make_system(TM_QUEUE_TIMEOUT_S="2")
    await system.start("api")
    run = Run("F queue timeout", system, [system.nats_url], http_server)

    async def fault() -> None:
        await run.accepted(TASKS)
        run.expected.update(dict.fromkeys(run.task_ids, "TIMEOUT"))

    outcome = await run_scenario(run, fault)
    await system.start(*STAGE_SERVICES)  # nothing is left for them: the queues are empty
    check(outcome)


async def test_revocations_mid_run(make_system, http_server: StaticHTTPServer) -> None:
    """With the uploader not yet running, revoke every other task wherever it is in the pipeline
    (queued, classifying, upscaling, waiting for upload); then start the uploader. Revoked tasks
    never write an output, the others all do, once."""
    system = make_system()
    await system.start("api", "fetcher", "classifier", "upscaler")
    run = Run("G half revoked mid-run", system, [system.nats_url], http_server)

    async def fault() -> None:
        async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as api:
            for revoked in range(TASKS // 2):
                await run.accepted(2 * revoked + 1)
                task_id = run.task_ids[2 * revoked]
                response = await api.post(f"/api/v1/tasks/{task_id}/revoke")
                assert response.status_code == 200, response.text
                run.expected[task_id] = "REVOKED"
        await system.start("uploader")

    check(await run_scenario(run, fault, restarts=True))  # the uploader starts mid-run
