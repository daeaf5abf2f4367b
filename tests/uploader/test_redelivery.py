"""On a redelivered upload, is the output already there? Against real S3, HTTP and disk."""

from __future__ import annotations

import gzip
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest

from services.uploader.redelivery import already_delivered
from shared.egress.netguard import AddressPolicy
from shared.egress.transport import guarded_client
from tests.security.hostile import MiB, body_bomb
from tests.security.servers import HostileHTTPServer, Reply
from tests.servers import S3Server, StaticHTTPServer

DATA = b"\x89PNG pretend output bytes"


async def delivered(url: str, data: bytes = DATA, endpoint: str | None = None, file_root: Path | None = None) -> bool:
    async with httpx.AsyncClient(timeout=5) as http:
        return await already_delivered(url, data, http=http, s3=None, s3_endpoint=endpoint, file_root=file_root)


async def test_s3_object_with_the_same_bytes(s3_env: S3Server, s3_bucket: str) -> None:
    assert not await delivered(f"s3://{s3_bucket}/out.png")  # not there yet
    s3_env.client().put_object(Bucket=s3_bucket, Key="out.png", Body=DATA)
    assert await delivered(f"s3://{s3_bucket}/out.png")
    assert not await delivered(f"s3://{s3_bucket}/out.png", DATA + b"!")  # other bytes: upload again
    assert await delivered(f"{s3_env.endpoint_url}/{s3_bucket}/out.png", endpoint=s3_env.endpoint_url)


async def test_local_file(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    assert not await delivered(target.as_uri(), file_root=tmp_path)
    target.write_bytes(DATA)
    assert await delivered(target.as_uri(), file_root=tmp_path)
    assert not await delivered(target.as_uri(), DATA[:-1], file_root=tmp_path)
    assert not await delivered(target.as_uri())  # TM_FILE_ROOT unset: not looked at (the upload refuses)
    assert not await delivered(target.as_uri(), file_root=tmp_path / "elsewhere")


async def test_local_file_behind_a_link_is_not_the_output(tmp_path: Path) -> None:
    # The upload replaces a link with a regular file, so a link there (even to the same bytes) is not it.
    (tmp_path / "outside.png").write_bytes(DATA)
    root = tmp_path / "root"
    root.mkdir()
    (root / "out.png").symlink_to(tmp_path / "outside.png")
    assert not await delivered((root / "out.png").as_uri(), file_root=root)


async def test_plain_put_target_read_back(http_server: StaticHTTPServer) -> None:
    url = http_server.url("put/redelivery-check.png")
    assert not await delivered(url)
    async with httpx.AsyncClient() as client:
        assert (await client.put(url, content=DATA)).status_code < 300
    assert await delivered(url)


@pytest.mark.parametrize("query", ["X-Amz-Signature=abc&X-Amz-Credential=x", "Signature=abc&AWSAccessKeyId=x"])
async def test_presigned_urls_cannot_be_read_back_so_are_written_again(
    http_server: StaticHTTPServer, query: str
) -> None:
    url = http_server.url("put/presigned.png")
    async with httpx.AsyncClient() as client:
        await client.put(url, content=DATA)
    assert not await delivered(f"{url}?{query}")


async def read_back(url: str, data: bytes = DATA, deadline_s: float = 5) -> tuple[bool, float]:
    """already_delivered through the uploader's guarded client (which asks for identity), and how long it took."""
    async with guarded_client(AddressPolicy(allow_private=True), role="output", timeout=httpx.Timeout(5)) as http:
        began = time.monotonic()
        held = await already_delivered(url, data, http=http, s3=None, s3_endpoint=None, deadline_s=deadline_s)
        return held, time.monotonic() - began


async def test_a_compressed_read_back_is_compared_decoded() -> None:
    with HostileHTTPServer() as server:
        url = server.reply("GET", "out.png", Reply(headers={"Content-Encoding": "gzip"}, body=gzip.compress(DATA)))
        assert (await read_back(url))[0]


@pytest.mark.parametrize(
    "reply",
    [Reply(headers={"Content-Encoding": "gzip, gzip"}, body=body_bomb()), Reply(zeros=256 * MiB)],
    ids=["gzip-gzip-bomb", "256-MiB-body"],
)
async def test_a_hostile_read_back_stops_past_our_length(reply: Reply) -> None:
    # A body longer than ours cannot be ours: read one byte past its length, then "upload again".
    with HostileHTTPServer() as server:
        tracemalloc.start()
        try:
            held, took_s = await read_back(server.reply("GET", "out.png", reply))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert not held
    assert peak < 2 * MiB and took_s < 2, (peak, took_s)


async def test_a_read_back_that_never_ends_is_cut_by_the_deadline() -> None:
    with HostileHTTPServer() as server:
        held, took_s = await read_back(server.url("trickle/out.png"), deadline_s=0.5)
    assert not held and took_s < 2
