"""The whole pipeline on real NATS, S3 and HTTP: success paths, clean-up and broken inputs."""

from __future__ import annotations

import asyncio
import io
import uuid

import httpx
import nats
import pytest
from nats.js.errors import NotFoundError
from PIL import Image

from shared.messages import PRIORITIES
from shared.wire import BLOBS_BUCKET, input_object, output_object, work_stream
from tests.e2e.images import photo, size_of
from tests.servers import S3Server, StaticHTTPServer
from tests.system import System, wait_terminal

TASK = "image_super_resolution_pipeline"


@pytest.fixture
async def api(system: System):
    async with httpx.AsyncClient(base_url=system.api_url, timeout=120) as client:
        yield client


async def submit(api: httpx.AsyncClient, input_url: str, output_url: str, **extra) -> httpx.Response:
    return await api.post("/api/v1/tasks", json={"task_name": TASK, "args": [input_url, output_url], **extra})


def s3_object(s3: S3Server, bucket: str, key: str) -> bytes:
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


async def leftovers(nats_url: str, task_id: str, within_s: float = 10) -> list[str]:
    """Anything of the task still in the object store or a work queue `within_s` after it ended.

    A stage writes the terminal state (and its event) first and then cleans up (dead letter, objects,
    ack): crash-safe, but a moment after the event. Nothing announces the clean-up, so this looks again
    until nothing is left or the time is up, and returns what is left then."""
    deadline = asyncio.get_running_loop().time() + within_s
    while (found := await _leftovers_now(nats_url, task_id)) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    return found


async def _leftovers_now(nats_url: str, task_id: str) -> list[str]:
    found = []
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        blobs = await js.object_store(BLOBS_BUCKET)
        for name in (input_object(task_id), output_object(task_id)):
            try:
                await blobs.get_info(name)
                found.append(name)
            except NotFoundError:
                pass
        for priority in PRIORITIES:
            info = await js.stream_info(work_stream(priority), subjects_filter=f"tm.work.p{priority}.*.{task_id}")
            found += list((info.state.subjects or {}).keys())
    finally:
        await nc.close()
    return found


async def test_sync_submission_returns_the_finished_task(
    api: httpx.AsyncClient, system: System, http_server: StaticHTTPServer, s3_server: S3Server, s3_bucket: str
) -> None:
    source = http_server.add(f"{uuid.uuid4().hex}.png", photo("astronaut.png", (40, 40)))
    response = await submit(api, source, f"s3://{s3_bucket}/out/astronaut.png", sync=True)

    assert response.status_code == 200, response.text
    status = response.json()
    assert status["state"] == "SUCCESS"
    assert status["progress"] == 1.0
    result = status["result"]
    assert result["input_url"] == source
    assert result["output_url"] == f"s3://{s3_bucket}/out/astronaut.png"
    assert set(result["classification"]) == {"category", "width", "height", "aspect_ratio"}
    assert (result["classification"]["width"], result["classification"]["height"]) == (40, 40)
    assert result["classification"]["aspect_ratio"] == 1.0
    assert (result["output_width"], result["output_height"]) == (160, 160)
    assert result["model"]
    assert size_of(s3_object(s3_server, s3_bucket, "out/astronaut.png")) == (160, 160)
    assert [s["name"] for s in status["subtasks"]] == ["fetch", "classify", "upscale", "upload"]
    assert all(s["state"] == "SUCCESS" and s["worker_id"] for s in status["subtasks"])
    assert status["submitted_at"] <= status["started_at"] <= status["completed_at"]
    assert await leftovers(system.nats_url, status["task_id"]) == []


async def test_async_submission_with_real_model_and_jpeg_output(
    api: httpx.AsyncClient, system: System, http_server: StaticHTTPServer, s3_server: S3Server, s3_bucket: str
) -> None:
    source = http_server.add(f"{uuid.uuid4().hex}.jpg", photo("coffee.png", (60, 40), fmt="JPEG"))
    output_url = f"{s3_server.endpoint_url}/{s3_bucket}/coffee-x4.jpg"  # path-style on the endpoint
    response = await submit(api, source, output_url, kwargs={"model": "realesr-animevideov3"}, priority=7)

    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["state"] == "PENDING"
    final = (await wait_terminal(system.nats_url, [accepted["task_id"]]))[accepted["task_id"]]
    assert final["state"] == "SUCCESS", final["error"]
    assert final["result"]["model"] == "realesr-animevideov3"
    assert final["priority"] == 7
    stored = s3_object(s3_server, s3_bucket, "coffee-x4.jpg")
    assert Image.open(io.BytesIO(stored)).format == "JPEG"
    assert size_of(stored) == (240, 160)

    fetched = (await api.get(f"/api/v1/tasks/{accepted['task_id']}")).json()
    # GET shows what the completion event carried, and the estimate it computes for tasks under way: none now
    assert (fetched.pop("eta"), fetched.pop("eta_s")) == (None, None)
    assert fetched == final


async def test_delete_removes_the_task(
    api: httpx.AsyncClient, system: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    source = http_server.add(f"{uuid.uuid4().hex}.png", photo(size=(24, 24)))
    task_id = (await submit(api, source, f"s3://{s3_bucket}/d.png", sync=True)).json()["task_id"]

    response = await api.delete(f"/api/v1/tasks/{task_id}")
    assert response.status_code == 200
    assert response.json() == {"status": "success", "message": f"Task {task_id} cleaned up"}
    assert (await api.get(f"/api/v1/tasks/{task_id}")).status_code == 404
    assert (await api.delete(f"/api/v1/tasks/{task_id}")).status_code == 404
    assert await leftovers(system.nats_url, task_id) == []


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("status/404", "HTTP 404"),
        ("not-an-image.png", "not an image"),
        ("truncated.png", "truncated"),
    ],
)
async def test_broken_input_fails_readably_and_leaves_nothing(
    api: httpx.AsyncClient, system: System, http_server: StaticHTTPServer, s3_server: S3Server, s3_bucket: str,
    path: str, expected: str,
) -> None:  # fmt: skip
    http_server.add("not-an-image.png", b"<html>this is not an image</html>")
    http_server.add("truncated.png", photo(size=(64, 64))[:300])
    key = f"broken-{uuid.uuid4().hex}.png"
    response = await submit(api, http_server.url(path), f"s3://{s3_bucket}/{key}", sync=True)

    assert response.status_code == 200
    status = response.json()
    assert status["state"] == "FAILURE"
    assert expected in status["error"]
    assert status["result"] is None
    failed = [s for s in status["subtasks"] if s["state"] == "FAILURE"]
    assert len(failed) == 1 and failed[0]["error"] == status["error"]
    assert await leftovers(system.nats_url, status["task_id"]) == []
    with pytest.raises(s3_server.client().exceptions.NoSuchKey):
        s3_server.client().get_object(Bucket=s3_bucket, Key=key)


async def test_fifty_concurrent_tasks_all_succeed(
    api: httpx.AsyncClient, system: System, http_server: StaticHTTPServer, s3_server: S3Server, s3_bucket: str
) -> None:
    sources = {
        (w, h): http_server.add(f"batch-{w}x{h}.png", photo("rocket.jpg", (w, h)))
        for w, h in [(32, 24), (40, 40), (24, 48), (56, 32), (36, 28)]
    }
    jobs = []
    for n in range(50):
        (w, h), source = list(sources.items())[n % len(sources)]
        kwargs = {"model": "realesr-animevideov3"} if n % 2 else {}
        jobs.append(((w, h), f"batch/{n}.png", submit(api, source, f"s3://{s3_bucket}/batch/{n}.png", kwargs=kwargs)))

    responses = await asyncio.gather(*(job for _, _, job in jobs))
    assert [r.status_code for r in responses] == [202] * 50
    ids = [r.json()["task_id"] for r in responses]
    assert len(set(ids)) == 50

    finals = await wait_terminal(system.nats_url, ids, timeout_s=240)
    states = {task_id: finals[task_id]["state"] for task_id in ids}
    assert set(states.values()) == {"SUCCESS"}, [finals[i]["error"] for i in ids if states[i] != "SUCCESS"][:3]
    for ((w, h), key, _), task_id in zip(jobs, ids, strict=True):
        assert size_of(s3_object(s3_server, s3_bucket, key)) == (4 * w, 4 * h)
        assert finals[task_id]["result"]["output_url"].endswith(key)

    metrics = (await api.get("/dashboard/metrics")).text
    assert f'tasks_submitted_total{{task_name="{TASK}"}}' in metrics
    assert f'tasks_completed_total{{status="success",task_name="{TASK}"}}' in metrics


async def test_s3_input_to_presigned_put_output(
    api: httpx.AsyncClient, system: System, s3_server: S3Server, s3_bucket: str
) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="in/cat.webp", Body=photo("chelsea.png", (30, 20), fmt="WEBP"))
    presigned = client.generate_presigned_url(
        "put_object", Params={"Bucket": s3_bucket, "Key": "out/cat.webp", "ContentType": "image/webp"}
    )
    response = await submit(api, f"s3://{s3_bucket}/in/cat.webp", presigned, sync=True)

    status = response.json()
    assert status["state"] == "SUCCESS", status["error"]
    stored = client.get_object(Bucket=s3_bucket, Key="out/cat.webp")
    assert stored["ContentType"] == "image/webp"
    data = stored["Body"].read()
    assert Image.open(io.BytesIO(data)).format == "WEBP"
    assert size_of(data) == (120, 80)


async def test_sixteen_bit_alpha_png_stays_sixteen_bit(
    api: httpx.AsyncClient, http_server: StaticHTTPServer, s3_server: S3Server, s3_bucket: str
) -> None:
    import numpy as np

    from services.upscaler.codec import encode_png16, png_header

    ramp = np.linspace(0, 65535, 24 * 20, dtype=np.uint16).reshape(20, 24)
    pixels = np.stack([ramp, ramp[::-1], np.full_like(ramp, 40000), np.full_like(ramp, 65535)], axis=-1)
    pixels[:5, :, 3] = 0  # a transparent band
    source = http_server.add(f"{uuid.uuid4().hex}.png", encode_png16(pixels))
    response = await submit(api, source, f"s3://{s3_bucket}/deep.png", sync=True)

    status = response.json()
    assert status["state"] == "SUCCESS", status["error"]
    stored = s3_object(s3_server, s3_bucket, "deep.png")
    assert png_header(stored) == (16, 6)  # 16 bits per sample, RGBA
    assert size_of(stored) == (96, 80)
