"""On a redelivered upload, is the output already there? Against real S3, HTTP and disk."""

from __future__ import annotations

from pathlib import Path

import aioboto3
import httpx
import pytest

from services.uploader.redelivery import already_delivered
from tests.servers import S3Server, StaticHTTPServer

DATA = b"\x89PNG pretend output bytes"


async def delivered(url: str, data: bytes = DATA, endpoint: str | None = None) -> bool:
    async with httpx.AsyncClient(timeout=5) as http:
        return await already_delivered(url, data, http=http, s3_session=aioboto3.Session(), s3_endpoint=endpoint)


async def test_s3_object_with_the_same_bytes(s3_env: S3Server, s3_bucket: str) -> None:
    assert not await delivered(f"s3://{s3_bucket}/out.png")  # not there yet
    s3_env.client().put_object(Bucket=s3_bucket, Key="out.png", Body=DATA)
    assert await delivered(f"s3://{s3_bucket}/out.png")
    assert not await delivered(f"s3://{s3_bucket}/out.png", DATA + b"!")  # other bytes: upload again
    assert await delivered(f"{s3_env.endpoint_url}/{s3_bucket}/out.png", endpoint=s3_env.endpoint_url)


async def test_local_file(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    assert not await delivered(target.as_uri())
    target.write_bytes(DATA)
    assert await delivered(target.as_uri())
    assert not await delivered(target.as_uri(), DATA[:-1])


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
