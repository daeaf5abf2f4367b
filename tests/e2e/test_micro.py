"""The whole fleet on the NATS service API, asked the way `nats micro ls / info / stats` asks: a plain NATS
client publishes `$SRV.PING|INFO|STATS[.<name>[.<id>]]` with a reply inbox and gathers every answer.

The fleet runs on a NATS server of its own (so every answer is one of its processes): the API, two
fetchers, the classifier, upscaler, uploader and notifier.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError

from shared.runtime.micro import DESCRIPTIONS
from shared.runtime.presence import VERSION
from tests.conftest import system_env
from tests.e2e.images import photo
from tests.servers import S3Server, StaticHTTPServer, start_nats
from tests.system import STAGE_SERVICES, System, worker_records

SERVICES = ("api", *STAGE_SERVICES, "notifier")
STAGES = {"api": "submit", "fetcher": "fetch", "classifier": "classify", "upscaler": "upscale"}
STAGES |= {"uploader": "upload", "notifier": "notify"}
KINDS = Counter([f"tm-{service}" for service in SERVICES] + ["tm-fetcher"])  # the fleet, by service API name
TASK = "image_super_resolution_pipeline"


@pytest.fixture(scope="module")
def fleet(s3_server: S3Server, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    directory = tmp_path_factory.mktemp("micro")
    server = start_nats(directory / "nats")
    system = System(server.url, directory / "logs", system_env(s3_server, model_dir, TM_CONCURRENCY="2"))
    try:
        asyncio.run(system.start(*SERVICES, instances={"fetcher": 2}))
        yield system
    finally:
        system.stop()
        server.stop()


async def gather(nc: Client, subject: str, expected: int, timeout_s: float = 10) -> list[dict]:
    """Every answer to one request on `subject`, until `expected` came (the CLI waits a fixed time instead)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    answers: list[dict] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(answers) < expected:
                answers.append(json.loads((await sub.next_msg(timeout=timeout_s)).data))
    except TimeoutError as exc:
        raise AssertionError(f"{len(answers)} of {expected} answers to {subject}: {answers}") from exc
    finally:
        await sub.unsubscribe()
    return answers


async def test_every_instance_answers_ping_with_its_name_version_id_and_metadata(fleet: System) -> None:
    records = {record["pid"]: record for record in await worker_records(fleet.nats_url)}
    pids = {process.pid for process in fleet.processes.values()}
    async with await nats.connect(fleet.nats_url) as nc:
        pings = await gather(nc, "$SRV.PING", expected=len(pids))
        fetchers = await gather(nc, "$SRV.PING.tm-fetcher", expected=2)

    assert Counter(ping["name"] for ping in pings) == KINDS
    assert {ping["version"] for ping in pings} == {VERSION}
    assert {ping["type"] for ping in pings} == {"io.nats.micro.v1.ping_response"}
    assert len({ping["id"] for ping in pings}) == len(pids)
    assert {int(ping["metadata"]["pid"]) for ping in pings} == pids
    for ping in pings:
        metadata = ping["metadata"]
        record = records[int(metadata["pid"])]  # the heartbeat of the same process
        assert ping["name"] == f"tm-{record['service']}"
        assert (metadata["worker_id"], metadata["host"]) == (record["worker_id"], record["host"])
        assert metadata["stage"] == STAGES[record["service"]]
        if record["service"] != "api":
            assert metadata["concurrency"] == "2"
    assert {f["id"] for f in fetchers} == {p["id"] for p in pings if p["name"] == "tm-fetcher"}


async def test_info_describes_each_service_and_its_status_endpoint_answers_the_heartbeat_record(
    fleet: System,
) -> None:
    async with await nats.connect(fleet.nats_url) as nc:
        infos = await gather(nc, "$SRV.INFO", expected=len(fleet.processes))
        for info in infos:
            service = info["name"].removeprefix("tm-")
            assert info["description"] == DESCRIPTIONS[service]
            [endpoint] = info["endpoints"]
            assert (endpoint["name"], endpoint["subject"]) == ("status", f"tm.status.{info['name']}.{info['id']}")

            status = json.loads((await nc.request(endpoint["subject"], b"", timeout=5)).data)

            assert (status["service"], status["version"]) == (service, VERSION)
            assert status["worker_id"] == info["metadata"]["worker_id"]
            assert status["pid"] == int(info["metadata"]["pid"])
            assert "in_flight" in status and "heartbeat_at" in status
        one = infos[0]
        by_id = await gather(nc, f"$SRV.INFO.{one['name']}.{one['id']}", expected=1)
        assert by_id == [one]


async def test_stats_counters_move_after_a_task_runs(
    fleet: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    async with await nats.connect(fleet.nats_url) as nc:
        before = await processed_by_kind(nc, len(fleet.processes))
        source = http_server.add(f"{uuid.uuid4().hex}.png", photo("astronaut.png", (32, 32)))
        async with httpx.AsyncClient(base_url=fleet.api_url, timeout=120) as api:
            body = {"task_name": TASK, "args": [source, f"s3://{s3_bucket}/micro.png"], "sync": True}
            response = await api.post("/api/v1/tasks", json=body)
        assert response.status_code == 200 and response.json()["state"] == "SUCCESS", response.text

        # A stage counts its message once it is acked, a moment after the state write the sync answer saw,
        # and the notifier reads the terminal event after that: ask again until every kind moved.
        async with asyncio.timeout(15):
            while (after := await processed_by_kind(nc, len(fleet.processes))) != {
                name: count + 1 for name, count in before.items()
            }:
                await asyncio.sleep(0.1)

        stats = await gather(nc, "$SRV.STATS", expected=len(fleet.processes))
    for answer in stats:
        [endpoint] = answer["endpoints"]
        data = endpoint["data"]
        assert set(data) == {"stage", "in_flight", "processed", "errors", "counters"}
        assert data["stage"] == STAGES[answer["name"].removeprefix("tm-")]
        assert (data["in_flight"], data["errors"]) == (0, 0)
    counters = {a["name"]: a["endpoints"][0]["data"]["counters"] for a in stats if a["name"] != "tm-fetcher"}
    assert counters["tm-api"]["submitted"] == after["tm-api"]
    assert counters["tm-uploader"]["succeeded"] == after["tm-uploader"]
    assert counters["tm-notifier"]["skipped"] == after["tm-notifier"]  # no callback_url: acknowledged at once


async def processed_by_kind(nc: Client, expected: int) -> dict[str, int]:
    """`processed` summed over the instances of each kind (the two fetchers share the fetch queue)."""
    totals: Counter[str] = Counter()
    for answer in await gather(nc, "$SRV.STATS", expected=expected):
        assert answer["type"] == "io.nats.micro.v1.stats_response"
        totals[answer["name"]] += answer["endpoints"][0]["data"]["processed"]
    return dict(totals)


async def test_a_stopped_instance_no_longer_answers(fleet: System) -> None:
    process = fleet.spawn("classifier", name="classifier-extra")
    await fleet.wait_heartbeats({process.pid}, timeout_s=60)
    async with await nats.connect(fleet.nats_url) as nc:
        classifiers = await gather(nc, "$SRV.PING.tm-classifier", expected=2)
        [extra] = [c for c in classifiers if c["metadata"]["pid"] == str(process.pid)]

        fleet.stop("classifier-extra")  # SIGTERM, and wait for the exit

        for subject in (f"$SRV.PING.tm-classifier.{extra['id']}", f"tm.status.tm-classifier.{extra['id']}"):
            with pytest.raises(NoRespondersError):
                await nc.request(subject, b"", timeout=5)
        [left] = await gather(nc, "$SRV.PING.tm-classifier", expected=1)
        assert left["id"] != extra["id"]
