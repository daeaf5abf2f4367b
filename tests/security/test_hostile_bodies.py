"""Hostile HTTP answers through the real system: a few KB that inflate to a gigabyte, an endless body,
a year-long Retry-After. No worker's memory grows past its limit, no task parks for longer than the
retry cap, and each task still ends the way it should.

The system runs on its own NATS with TM_FETCH_MAX_BYTES at 8 MiB; a worker's peak RSS (sampled, and
the kernel's high-water mark) must stay under its RSS before the task plus twice that limit. Before the
bounded reader (shared/egress/bodies.py), the bomb below took the fetcher from 75 MiB to 4,600 MiB.
With -s the tests print the figures.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from shared.taskstate.status import parse_time
from shared.wire import EVENTS_STREAM, change_subject
from tests.conftest import system_env
from tests.e2e.images import photo
from tests.security import hostile
from tests.security.hostile import MiB, body_bomb
from tests.security.rss import PeakRss, rss_bytes
from tests.security.servers import HostileHTTPServer, Reply
from tests.servers import S3Server
from tests.system import STAGE_SERVICES, System, system_on_own_nats, wait_terminal

TASK = "image_super_resolution_pipeline"
LIMIT = 8 * MiB
YEAR_S = 31_536_000
RETRY_MAX_DELAY_S = 2
ENV = {
    "TM_FETCH_MAX_BYTES": str(LIMIT),
    "TM_RETRY_BASE_DELAY_S": "0.1",
    "TM_MAX_RETRIES": "3",
    "TM_RETRY_MAX_DELAY_S": str(RETRY_MAX_DELAY_S),
}
BOMB_HEADERS = {"Content-Encoding": "gzip, gzip"}


@pytest.fixture(scope="module")
def bodies_system(s3_server: S3Server, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    directory = tmp_path_factory.mktemp("hostile-bodies")
    with system_on_own_nats(directory, system_env(s3_server, model_dir, **ENV), "api", *STAGE_SERVICES) as system:
        yield system


@pytest.fixture(scope="module")
def server() -> Iterator[HostileHTTPServer]:
    with HostileHTTPServer() as running:
        yield running


async def submit(system: System, input_url: str, output_url: str) -> str:
    async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as api:
        response = await api.post("/api/v1/tasks", json={"task_name": TASK, "args": [input_url, output_url]})
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


async def run(system: System, input_url: str, output_url: str) -> dict[str, Any]:
    """The task's terminal status."""
    task_id = await submit(system, input_url, output_url)
    return (await wait_terminal(system.nats_url, [task_id], timeout_s=120))[task_id]


def subtask(status: dict[str, Any], stage: str) -> dict[str, Any]:
    return next(entry for entry in status["subtasks"] if entry["name"] == stage)


def report(case: str, baseline: int, rss: PeakRss) -> None:
    grown = (rss.peak_bytes - baseline) / MiB
    print(f"\n{case}: RSS {baseline / MiB:.1f} MiB before, peak {rss.peak_bytes / MiB:.1f} MiB (+{grown:.1f} MiB; "
          f"bound +{2 * LIMIT / MiB:.0f} MiB; {rss.samples} samples)")  # fmt: skip


async def test_a_gzip_bomb_input_fails_on_the_first_attempt_in_little_memory(
    bodies_system: System, server: HostileHTTPServer, s3_bucket: str
) -> None:
    fetcher = bodies_system.processes["fetcher"].pid
    output = f"s3://{s3_bucket}/out/{uuid.uuid4().hex}.png"
    # First a small compressed non-image, so that the fetcher has been through this code before the baseline.
    warm = server.reply(
        "GET", "warm.png", Reply(headers={"Content-Encoding": "gzip"}, body=gzip.compress(hostile.TEXT))
    )
    assert "not an image" in (await run(bodies_system, warm, output))["error"]
    baseline = rss_bytes(fetcher)
    bomb = server.reply("GET", "bomb.png", Reply(headers=BOMB_HEADERS, body=body_bomb()))  # 2.5 KB, 1 GiB inside
    with PeakRss(fetcher) as rss:
        final = await run(bodies_system, bomb, output)
    report("fetcher, gzip(gzip(1 GiB))", baseline, rss)
    assert final["state"] == "FAILURE"
    assert final["error"] == f"input is larger than the {LIMIT}-byte limit (TM_FETCH_MAX_BYTES): {bomb}"
    assert subtask(final, "fetch")["attempts"] == 1  # refused for good, not retried
    assert rss.peak_bytes < baseline + 2 * LIMIT


async def upload_on_the_second_attempt(system: System, server: HostileHTTPServer, source: str, get: Reply) -> str:
    """A task whose first PUT gets a 503, so its second upload attempt reads the target back first
    (answered with `get`); the second PUT succeeds. Returns the target's name."""
    name = f"{uuid.uuid4().hex}.png"
    server.reply("GET", name, get)
    final = await run(system, source, server.reply("PUT", name, Reply(503), Reply(200)))
    assert final["state"] == "SUCCESS", final["error"]
    assert subtask(final, "upload")["attempts"] == 2
    assert [r for r in server.requests if r.endswith(name)] == [f"PUT /{name}", f"GET /{name}", f"PUT /{name}"]
    return name


@pytest.mark.parametrize(
    "answer",
    [Reply(headers=BOMB_HEADERS, body=body_bomb()), Reply(zeros=256 * MiB)],
    ids=["gzip-gzip-bomb", "256-MiB-body"],
)
async def test_a_hostile_read_back_is_bounded_and_the_upload_still_happens(
    bodies_system: System, server: HostileHTTPServer, answer: Reply
) -> None:
    uploader = bodies_system.processes["uploader"].pid
    source = server.add(f"{uuid.uuid4().hex}.png", photo(size=(24, 24)))
    not_ours = Reply(headers={"Content-Encoding": "gzip"}, body=gzip.compress(b"someone else's bytes"))
    await upload_on_the_second_attempt(bodies_system, server, source, not_ours)  # the same path, before the baseline
    baseline = rss_bytes(uploader)
    with PeakRss(uploader) as rss:
        await upload_on_the_second_attempt(bodies_system, server, source, answer)  # "not delivered": upload again
    report(f"uploader read-back, {'gzip(gzip(1 GiB))' if answer.body else '256 MiB body'}", baseline, rss)
    assert rss.peak_bytes < baseline + 2 * LIMIT


async def test_a_hostile_answer_to_the_upload_is_never_read(bodies_system: System, server: HostileHTTPServer) -> None:
    """The PUT target answers 200 with a compression bomb: the uploader closes the answer unread."""
    uploader = bodies_system.processes["uploader"].pid
    source = server.add(f"{uuid.uuid4().hex}.png", photo(size=(24, 24)))
    polite = Reply(200, {"Content-Encoding": "gzip"}, gzip.compress(b"thanks"))
    assert (await run(bodies_system, source, server.reply("PUT", f"{uuid.uuid4().hex}.png", polite)))[
        "state"
    ] == "SUCCESS"
    baseline = rss_bytes(uploader)
    bomb = Reply(200, BOMB_HEADERS, body_bomb())
    with PeakRss(uploader) as rss:
        final = await run(bodies_system, source, server.reply("PUT", f"{uuid.uuid4().hex}.png", bomb))
    report("uploader PUT answered with gzip(gzip(1 GiB))", baseline, rss)
    assert final["state"] == "SUCCESS", final["error"]
    assert rss.peak_bytes < baseline + 2 * LIMIT


async def retry_events(nats_url: str, task_id: str, count: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    """The task's first `count` retry events (task.changes.<id>.retry), replayed from the stream."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().subscribe(
            change_subject(task_id, "retry"), stream=EVENTS_STREAM, ordered_consumer=True
        )
        return [json.loads((await sub.next_msg(timeout=timeout_s)).data) for _ in range(count)]
    finally:
        await nc.close()


@pytest.mark.parametrize(("stage", "status"), [("fetch", 503), ("upload", 429)])
async def test_a_year_long_retry_after_ends_the_task_within_the_retry_budget(
    bodies_system: System, server: HostileHTTPServer, stage: str, status: int
) -> None:
    """Each retry waits at most TM_RETRY_MAX_DELAY_S (2 s here, 30 s by default), not the year asked
    for; after TM_MAX_RETRIES + 1 attempts the task is a FAILURE that says what the server asked."""
    name = f"{uuid.uuid4().hex}.png"
    busy = Reply(status, {"Retry-After": str(YEAR_S)}, b"come back next year\n")
    if stage == "fetch":
        source, output = server.reply("GET", name, busy), server.url(f"unused-{name}")
    else:
        source, output = server.add(name, photo(size=(24, 24))), server.reply("PUT", f"out-{name}", busy)
    task_id = await submit(bodies_system, source, output)
    retries = await retry_events(bodies_system.nats_url, task_id, count=3)
    final = (await wait_terminal(bodies_system.nats_url, [task_id], timeout_s=60))[task_id]

    role, url = ("input", source) if stage == "fetch" else ("output", output)
    capped = "retries wait at most TM_RETRY_MAX_DELAY_S"
    asked = f"{role} URL returned HTTP {status} (asked to retry after {YEAR_S} s; {capped}): {url}"
    assert final["state"] == "FAILURE"
    assert final["error"] == f"{asked} (gave up after 4 attempts)"
    assert subtask(final, stage)["attempts"] == 4
    assert [event["error"] for event in retries] == [asked] * 3
    taken_s = (parse_time(final["completed_at"]) - parse_time(retries[0]["timestamp"])).total_seconds()
    print(f"\n{stage} answered {status} + Retry-After {YEAR_S}: FAILURE {taken_s:.1f} s after the first retry")
    assert taken_s < 3 * RETRY_MAX_DELAY_S + 4  # three capped waits, and the attempts themselves
