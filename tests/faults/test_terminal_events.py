"""The uploader killed right after SUCCESS (issue #10, part 3): GET, events, metrics and the object
store agree afterwards.

The uploader SIGKILLs itself (tests/faults/crashpoint) on a terminal state write, after the SUCCESS is
in the KV bucket and before its events are published, its objects removed and its message
acknowledged; a fresh process replaces it, which is killed the same way, three times in a run. Whoever
next meets such a task finishes the dead writer's work: the uploader the message is redelivered to
(ack wait 5 s), or the sweeper, when the queue timeout runs out before the ack wait does. Every task
must end SUCCESS with one output and one terminal event, `tasks_completed_total` must count each task
once, and no object may stay in the object store.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import httpx
import nats
import pytest
from nats.js.errors import NotFoundError

from shared.wire import BLOBS_BUCKET
from tests.faults.harness import (
    TASK,
    TASKS,
    Run,
    assert_nothing_duplicated,
    assert_nothing_lost,
    assert_one_terminal_event_each,
    run_scenario,
)
from tests.servers import StaticHTTPServer
from tests.system import ROOT, STAGE_SERVICES

pytestmark = pytest.mark.faults
CRASHES = 3
CRASH_ENV = {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent / "crashpoint"), str(ROOT)])),
    "TM_TEST_CRASH_AFTER_TERMINAL_WRITES": "15",
    # One upload at a time: the killed process holds only the task it just ended, whose message the
    # finder under test must handle; no other held message waits out the (long) ack wait.
    "TM_CONCURRENCY": "1",
}
FINDERS = {
    # the message comes back to the replacement uploader after the 5 s ack wait
    "redelivery": {},
    # the sweeper sees the message past the queue timeout long before its ack wait runs out
    # (20 s: on a loaded machine the upload queue waits several seconds for each replacement process)
    "sweeper": {"TM_ACK_WAIT_S": "60", "TM_QUEUE_TIMEOUT_S": "20"},
}


async def completed_counts(api_url: str) -> dict[str, float]:
    """tasks_completed_total by status, from the API's /dashboard/metrics."""
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as api:
        text = (await api.get("/dashboard/metrics")).text
    pattern = rf'^tasks_completed_total{{status="(\w+)",task_name="{TASK}"}} ([0-9.e+]+)$'
    return {state: float(value) for state, value in re.findall(pattern, text, re.MULTILINE)}


async def counted(api_url: str, total: int, timeout_s: float = 20) -> dict[str, float]:
    """The counts once they add up to `total` (events are counted as the API reads them), or at the bound."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while sum((counts := await completed_counts(api_url)).values()) < total:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)  # a scrape is a poll: nothing announces a counter's change
    return counts


async def stored_objects(nats_url: str, timeout_s: float = 20) -> list[str]:
    """Objects left in the object store once the clean-ups are done (bounded)."""
    nc = await nats.connect(nats_url)
    try:
        blobs = await nc.jetstream().object_store(BLOBS_BUCKET)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                names = [info.name for info in await blobs.list() if not info.deleted]
            except NotFoundError:
                names = []
            if not names or asyncio.get_running_loop().time() > deadline:
                return names
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def restorations(log_dir: Path) -> int:
    return sum(path.read_text(errors="replace").count('"terminal_event_restored"') for path in log_dir.glob("*.log"))


@pytest.mark.parametrize("finder", list(FINDERS))
async def test_uploader_killed_after_success_leaves_everything_agreeing(
    make_system, http_server: StaticHTTPServer, finder: str
) -> None:
    system = make_system(**FINDERS[finder])
    await system.start("api", *STAGE_SERVICES[:-1])
    await system.start("uploader", **CRASH_ENV)
    run = Run(f"H uploader SIGKILLed after SUCCESS ({finder})", system, [system.nats_url], http_server)
    exits: list[int | None] = []

    async def fault() -> None:
        for crash in range(CRASHES):
            uploader = system.processes["uploader"]
            exits.append(await asyncio.to_thread(uploader.wait, run.left_s()))
            await system.start("uploader", **(CRASH_ENV if crash < CRASHES - 1 else {}))

    outcome = await run_scenario(run, fault, restarts=True)
    assert exits == [-signal.SIGKILL] * CRASHES, f"the uploader did not die at its crash point: {exits}"
    assert_nothing_lost(outcome)
    assert_nothing_duplicated(outcome)
    assert_one_terminal_event_each(outcome)

    counts = await counted(system.api_url, TASKS)
    assert counts == {"success": TASKS}, f"tasks_completed_total: {counts}"
    assert await stored_objects(system.nats_url) == []
    restored = restorations(system.log_dir)
    print(f"{outcome.name}: crashes {CRASHES}, events restored {restored}, metrics {counts}")
    assert restored >= CRASHES, f"expected each crash's task to be restored:\n{system.logs()}"
