"""The test servers themselves: each answers the way the rest of the suite relies on."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import nats
import pytest
from botocore.config import Config

from tests.servers import NatsServer, S3Server, StaticHTTPServer, start_nats


async def test_nats_jetstream_publish_and_fetch(nats_server: NatsServer) -> None:
    stream, subject = f"T{uuid.uuid4().hex}", f"t.{uuid.uuid4().hex}"
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        ack = await js.publish(subject, b"hello")
        assert ack.stream == stream
        sub = await js.pull_subscribe(subject, durable="d")
        [msg] = await sub.fetch(1, timeout=5)
        assert msg.data == b"hello"
        await msg.ack()
        await js.delete_stream(stream)
    finally:
        await nc.close()


async def test_nats_restart_keeps_port_and_stream(tmp_path: Path) -> None:
    server = start_nats(tmp_path)
    try:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(name="KEEP", subjects=["keep"])
        await nc.jetstream().publish("keep", b"x")
        await nc.close()
        port = server.port
        server.restart()
        assert server.port == port and server.process.poll() is None
        nc = await nats.connect(server.url)
        info = await nc.jetstream().stream_info("KEEP")
        assert info.state.messages == 1
        await nc.close()
    finally:
        server.stop()


async def test_s3_put_get_and_presigned_put(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"data")
    assert client.get_object(Bucket=s3_bucket, Key="a/b.txt")["Body"].read() == b"data"

    signer = s3_server.client(Config(signature_version="s3v4"))
    url = signer.generate_presigned_url("put_object", Params={"Bucket": s3_bucket, "Key": "p.bin"})
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.put(url, content=b"presigned")).status_code == 200
        # The server checks signatures: the same URL with its signature altered is refused.
        forged = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert (await http.put(forged, content=b"forged")).status_code == 403
    assert client.get_object(Bucket=s3_bucket, Key="p.bin")["Body"].read() == b"presigned"


def test_s3_env_names_only_standard_variables(s3_server: S3Server) -> None:
    assert set(s3_server.env()) == {
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    }


async def test_http_flaky_then_ok_and_put(http_server: StaticHTTPServer) -> None:
    name = f"{uuid.uuid4().hex}.txt"
    http_server.add(name, b"payload")
    async with httpx.AsyncClient(timeout=10) as http:
        flaky = http_server.url(f"flaky/2/{name}")
        assert [(await http.get(flaky)).status_code for _ in range(3)] == [503, 503, 200]
        assert (await http.get(http_server.url(name))).content == b"payload"
        assert (await http.get(http_server.url("status/418"))).status_code == 418
        assert (await http.get(http_server.url("missing.txt"))).status_code == 404
        put = await http.put(http_server.url("put/out.bin"), content=b"up", headers={"Content-Type": "x/y"})
        assert put.status_code == 200
    assert http_server.puts["out.bin"] == b"up"
    assert http_server.requests[-1].headers["Content-Type"] == "x/y"


def test_start_nats_reports_log_when_not_ready(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="log"):
        start_nats(tmp_path, extra_args=["--no-such-flag"])
