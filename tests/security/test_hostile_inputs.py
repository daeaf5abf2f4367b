"""Hostile inputs through the real system: each task fails with an error naming the problem, no worker
dies, and nothing is left in the object store, the work queues or the output bucket.

Classes run one after another (their tasks in parallel), so a dead worker is pinned on its class. With
-s the test prints a table: input class | tried | refused correctly | worker crashes.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.e2e.images import photo
from tests.e2e.test_pipeline import TASK, leftovers
from tests.security import hostile
from tests.security.servers import HostileHTTPServer
from tests.servers import S3Server, StaticHTTPServer
from tests.system import System, wait_terminal

SUBMIT_ATTEMPTS = 20  # a 429 from the API's rate limiter is waited out, this many times at most


@dataclass
class Case:
    input_url: str
    expect: str  # what the task's error must say
    output_url: str | None = None  # None: a fresh s3:// key in the test bucket
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    input_class: str
    tried: int
    refused: int
    crashes: list[str]
    wrong: list[str]


async def submit(api: httpx.AsyncClient, case: Case, bucket: str) -> httpx.Response:
    output_url = case.output_url or f"s3://{bucket}/out/{uuid.uuid4().hex}.png"
    body = {"task_name": TASK, "args": [case.input_url, output_url], "kwargs": case.kwargs}
    for _ in range(SUBMIT_ATTEMPTS):
        response = await api.post("/api/v1/tasks", json=body)
        if response.status_code != 429:
            return response
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))  # the server's own advice
    return response


async def run_class(system: System, api: httpx.AsyncClient, bucket: str, name: str, cases: list[Case]) -> Row:
    """Submit the class's cases at once, wait for every task to end, check each outcome and the workers."""
    responses = await asyncio.gather(*(submit(api, case, bucket) for case in cases))
    wrong: list[str] = []
    task_cases: dict[str, Case] = {}
    for case, response in zip(cases, responses, strict=True):
        if response.status_code == 202:
            task_cases[response.json()["task_id"]] = case
        elif not (response.status_code == 400 and case.expect in response.json()["detail"]):
            wrong.append(f"{case.input_url}: HTTP {response.status_code} {response.text}")
    finals = await wait_terminal(system.nats_url, list(task_cases), timeout_s=90) if task_cases else {}
    for task_id, case in task_cases.items():
        final = finals[task_id]
        if final["state"] != "FAILURE" or case.expect not in (final["error"] or ""):
            wrong.append(f"{case.input_url}: {final['state']} {final['error']!r}, expected {case.expect!r}")
        if left := await leftovers(system.nats_url, task_id):
            wrong.append(f"{case.input_url}: left behind {left}")
    crashes = [service for service, process in system.processes.items() if process.poll() is not None]
    return Row(name, len(cases), len(cases) - len(wrong), crashes, wrong)


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print(f"{'input class':<34} | {'tried':>5} | {'refused correctly':>17} | worker crashes")
    print("-" * 80)
    for row in rows:
        print(f"{row.input_class:<34} | {row.tried:>5} | {row.refused:>17} | {len(row.crashes)}")
    print(f"{'total':<34} | {sum(r.tried for r in rows):>5} | {sum(r.refused for r in rows):>17} | "
          f"{len({c for r in rows for c in r.crashes})}")  # fmt: skip


def check(rows: list[Row], system: System, s3: S3Server, bucket: str) -> None:
    problems = [f"{row.input_class}: {problem}" for row in rows for problem in row.wrong]
    assert not problems, "\n".join(problems)
    assert all(not row.crashes for row in rows), f"workers died:\n{system.logs()}"
    assert s3.client().list_objects_v2(Bucket=bucket, Prefix="out/")["KeyCount"] == 0  # nothing uploaded


async def test_bad_images_fail_cleanly(
    system: System, http_server: StaticHTTPServer, s3_server: S3Server, s3_bucket: str
) -> None:
    def served(data: bytes, suffix: str = "png") -> str:
        return http_server.add(f"hostile/{uuid.uuid4().hex}.{suffix}", data)

    corrupt = "is corrupt or truncated"
    over_40 = "over the 40 MP limit (TM_MAX_INPUT_PIXELS); refused before decoding"
    classes = {
        "not an image (html/svg/pdf/text)": [
            Case(served(hostile.HTML), "input format html is not accepted (not an image)"),
            Case(served(hostile.SVG), "input format svg is not accepted"),
            Case(served(hostile.PDF), "input format pdf is not accepted (not an image)"),
            Case(served(hostile.TEXT), "input is not an image in a known format"),
            Case(served(b""), "input is empty (0 bytes)"),
        ],
        "truncated": [
            Case(served(hostile.truncated(photo(size=(64, 48), fmt=fmt)), fmt.lower()), f"({fmt.lower()}) {corrupt}")
            for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
        ],
        "corrupt (flipped bytes)": [
            Case(served(hostile.flipped(photo(size=(64, 48)), [100, 200, 300])), f"(png) {corrupt}"),
            Case(served(hostile.flipped(photo(size=(64, 48), fmt="GIF"), [10, 11])), f"(gif) {corrupt}"),
            Case(served(hostile.flipped(photo(size=(64, 48), fmt="WEBP"), [40, 60, 80])), f"(webp) {corrupt}"),
            Case(served(hostile.flipped(photo(size=(64, 48), fmt="JPEG"), [2, 3])), "not an image in a known format"),
        ],
        "pixel bomb (header > 40 MP)": [
            Case(served(hostile.png_bomb()), f"input image is 20000x20000 (400 MP), {over_40}"),
            Case(served(hostile.jpeg_bomb()), f"input image is 60000x60000 (3600 MP), {over_40}"),
            Case(served(hostile.gif_bomb()), f"input image is 60000x60000 (3600 MP), {over_40}"),
            Case(served(hostile.bmp_bomb()), f"input image is 50000x50000 (2500 MP), {over_40}"),
            Case(served(hostile.webp_bomb()), f"input image is 16383x16383 (268.4 MP), {over_40}"),
        ],
        "output over 256 MP": [
            Case(
                served(hostile.png_bomb(3000, 2250)),  # 6.75 MP in, x8
                "output would be 24000x18000 (432 MP), over the 256 MP limit (TM_MAX_OUTPUT_PIXELS)",
                kwargs={"outscale": 8},
            ),
        ],
        "broken URL (404, redirect loop)": [
            Case(http_server.url("hostile/no-such-file.png"), "input URL returned HTTP 404"),
            Case(http_server.url("redirect/9/x.png"), "redirected more than 5 times (TM_FETCH_MAX_REDIRECTS)"),
        ],
    }
    async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as api:
        rows = [await run_class(system, api, s3_bucket, name, cases) for name, cases in classes.items()]
    print_table("hostile images (the session's system)", rows)
    check(rows, system, s3_server, s3_bucket)


async def test_ssrf_and_limits_fail_cleanly(
    strict_system: System,
    allowed_server: HostileHTTPServer,
    http_server: StaticHTTPServer,
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    victim = http_server.add(f"secret-{uuid.uuid4().hex}.png", photo(size=(24, 24)))
    port = http_server.port
    s3_server.client().put_object(Bucket=s3_bucket, Key="in/ok.png", Body=photo(size=(24, 24)))
    s3_input = f"s3://{s3_bucket}/in/ok.png"  # the configured endpoint: fine, whatever its address
    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    cloud = "input URL host 169.254.169.254 is a link-local address (cloud metadata), refused"
    classes = {
        "ssrf: loopback in any notation": [
            Case(victim, "input URL host 127.0.0.1 is a loopback address, refused"),
            Case(f"http://localhost:{port}/x.png", "input URL host localhost is a loopback name, refused"),
            Case(f"http://2130706433:{port}/x.png", "host 2130706433 is 127.0.0.1, a loopback address, refused"),
            Case(f"http://0177.0.0.1:{port}/x.png", "host 0177.0.0.1 is 127.0.0.1, a loopback address, refused"),
            Case(f"http://0x7f.0.0.1:{port}/x.png", "host 0x7f.0.0.1 is 127.0.0.1, a loopback address, refused"),
            Case(f"http://127.1:{port}/x.png", "host 127.1 is 127.0.0.1, a loopback address, refused"),
            Case(f"http://[::1]:{port}/x.png", "input URL host ::1 is a loopback address, refused"),
            Case(f"http://[::ffff:127.0.0.1]:{port}/x.png", "IPv4-mapped address of 127.0.0.1, a loopback"),
            Case(f"http://0.0.0.0:{port}/x.png", "input URL host 0.0.0.0 is an unspecified address, refused"),
            Case(f"http://127\u30020\u30020\u30021:{port}/x.png", "is 127.0.0.1, a loopback address, refused"),
            Case(f"http://[::ffff:0:127.0.0.1]:{port}/x.png", "IPv4-translated address of 127.0.0.1, a loopback"),
        ],
        "ssrf: metadata and private nets": [
            Case(metadata, cloud),
            Case("http://10.0.0.1/x.png", "input URL host 10.0.0.1 is a private address, refused"),
            Case("http://192.168.0.1/x.png", "input URL host 192.168.0.1 is a private address, refused"),
            Case("http://[fd00:ec2::254]/latest/", "fd00:ec2::254 is a unique-local address (cloud metadata)"),
            Case("http://100.100.100.200/latest/", "carrier-grade NAT address (cloud metadata), refused"),
        ],
        "ssrf: redirect from allowed host": [
            Case(allowed_server.redirect_to(metadata), cloud),
            Case(allowed_server.redirect_to(victim), "input URL host 127.0.0.1 is a loopback address, refused"),
            Case(allowed_server.redirect_to("file:///etc/passwd"), "redirected to a non-HTTP URL"),
        ],
        "ssrf: other schemes": [
            Case("file:///etc/passwd", "file:// input URLs are not allowed here (TM_FILE_ROOT is not set)"),
            Case(
                s3_input,
                "file:// output URLs are not allowed here (TM_FILE_ROOT is not set)",
                output_url="file:///etc/cron.d/x.png",
            ),
        ],
        "ssrf: output PUT": [
            Case(
                s3_input,
                "output URL host 127.0.0.1 is a loopback address, refused",
                output_url=http_server.url(f"put/{uuid.uuid4().hex}.png"),
            ),
            Case(
                s3_input,
                "output URL host 169.254.169.254 is a link-local address (cloud metadata), refused",
                output_url="http://169.254.169.254/put/x.png",
            ),
        ],  # fmt: skip
        "too many bytes (> 300000)": [
            Case(allowed_server.add("big.png", photo(size=(400, 400)) + bytes(300_000)), "300000-byte limit"),
        ],
        "slow-loris (2 s deadline)": [
            Case(allowed_server.url("trickle/x.png"), "within the 2 s limit (TM_FETCH_TIMEOUT_S)"),
        ],
        "format off (tiff not accepted)": [
            Case(
                allowed_server.add("scan.tiff", hostile.encoded("TIFF")),
                "input format tiff is not accepted; accepted: bmp, gif, jpeg, png, webp",
            ),
        ],
    }
    before = len(http_server.requests)
    async with httpx.AsyncClient(base_url=strict_system.api_url, timeout=30) as api:
        rows = [await run_class(strict_system, api, s3_bucket, name, cases) for name, cases in classes.items()]
    print_table("SSRF and resource limits (a system with private networks refused)", rows)
    check(rows, strict_system, s3_server, s3_bucket)
    assert http_server.requests[before:] == []  # the would-be victim on 127.0.0.1 never heard of it
