"""Reading inputs from real HTTP and S3 servers, and how each failure is classified."""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.fetcher.sources import read_input
from shared.egress.failures import http_status_error, retry_after_s, safe_url
from shared.egress.netguard import AddressPolicy
from shared.egress.s3 import S3Client
from shared.egress.transport import guarded_client
from shared.runtime import stage
from shared.runtime.errors import MAX_BACKOFF_S, ConfigurationError, InputError, RetryableError
from tests.servers import S3Server, StaticHTTPServer

MAX = 1024
OPEN = AddressPolicy(allow_private=True)  # the test servers are on loopback; tests/security covers the guard
STRICT = AddressPolicy()  # s3:// goes to the configured endpoint, which no policy applies to


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with guarded_client(STRICT, role="input", timeout=httpx.Timeout(5)) as client:
        yield client


@pytest.fixture
def served(http_server: StaticHTTPServer) -> str:
    """The name of a fresh 100-byte file on the HTTP server."""
    name = f"{uuid.uuid4().hex}.bin"
    http_server.add(name, b"x" * 100)
    return name


async def read(
    url: str, *, policy: AddressPolicy = OPEN, max_bytes: int = MAX, timeout_s: float = 5, **kwargs: Any
) -> bytes:
    async with guarded_client(policy, role="input", timeout=httpx.Timeout(timeout_s)) as http:
        return await read_input(url, http=http, policy=policy, max_bytes=max_bytes, **kwargs)


async def test_http_ok(http_server: StaticHTTPServer, served: str) -> None:
    assert await read(http_server.url(served)) == b"x" * 100


async def test_http_follows_redirects_up_to_the_limit(http_server: StaticHTTPServer, served: str) -> None:
    assert await read(http_server.url(f"redirect/5/{served}")) == b"x" * 100
    with pytest.raises(InputError, match="redirected more than 5 times"):
        await read(http_server.url(f"redirect/6/{served}"))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 451])
async def test_http_client_errors_are_input_errors(http_server: StaticHTTPServer, status: int) -> None:
    url = http_server.url(f"status/{status}")
    with pytest.raises(InputError, match=f"input URL returned HTTP {status}: {url}"):
        await read(url)


async def test_http_missing_file_is_input_error(http_server: StaticHTTPServer) -> None:
    with pytest.raises(InputError, match="HTTP 404"):
        await read(http_server.url("no-such-file.png"))


async def test_http_flaky_503_is_retryable_then_succeeds(http_server: StaticHTTPServer, served: str) -> None:
    url = http_server.url(f"flaky/1/{served}")
    with pytest.raises(RetryableError, match="HTTP 503") as caught:
        await read(url)
    assert caught.value.delay_s is None
    assert await read(url) == b"x" * 100


async def test_http_429_uses_retry_after(http_server: StaticHTTPServer) -> None:
    with pytest.raises(RetryableError, match="HTTP 429") as caught:
        await read(http_server.url("status/429?retry_after=7"))
    assert caught.value.delay_s == 7


@pytest.mark.parametrize("status", [503, 429])
async def test_a_year_long_retry_after_waits_at_most_the_backoff_cap(
    http_server: StaticHTTPServer, status: int
) -> None:
    url = http_server.url(f"status/{status}?retry_after=31536000")
    asked = (
        f"input URL returned HTTP {status} (asked to retry after 31536000 s; retries wait at most "
        f"TM_RETRY_MAX_DELAY_S): {url}"
    )
    with pytest.raises(RetryableError) as caught:
        await read(url)
    assert (str(caught.value), caught.value.delay_s) == (asked, MAX_BACKOFF_S)


@pytest.mark.parametrize("route", ["", "nolength/"])  # declared Content-Length, and none at all
async def test_http_too_large_is_input_error(http_server: StaticHTTPServer, route: str) -> None:
    name = f"{uuid.uuid4().hex}.bin"
    http_server.add(name, b"y" * (MAX + 1))
    with pytest.raises(InputError, match=f"larger than the {MAX}-byte limit"):
        await read(http_server.url(route + name))
    http_server.add(name, b"y" * MAX)
    assert len(await read(http_server.url(route + name))) == MAX


async def test_http_read_timeout_without_a_deadline_is_retryable(http_server: StaticHTTPServer, served: str) -> None:
    # The worker always sets a deadline (tests/security/test_limits.py); a lone read timeout is the network's.
    with pytest.raises(RetryableError, match="ReadTimeout"):
        await read(http_server.url(f"slow/2000/{served}"), timeout_s=0.2)


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(RetryableError, match="ConnectError"):
            await read(f"http://127.0.0.1:{port}/x.png")


async def test_file_urls(tmp_path: Path) -> None:
    path = tmp_path / "in put.png"
    path.write_bytes(b"local")
    url = f"file://{str(path).replace(' ', '%20')}"
    # Off unless TM_FILE_ROOT is set, whatever the address policy says.
    with pytest.raises(InputError, match=r"file:// input URLs are not allowed here \(TM_FILE_ROOT is not set\)"):
        await read(url)
    assert await read(url, file_root=tmp_path) == b"local"
    assert await read(url, policy=AddressPolicy(), file_root=tmp_path) == b"local"  # private networks closed
    with pytest.raises(InputError, match="cannot read input file"):
        await read(f"file://{tmp_path}/missing.png", file_root=tmp_path)
    with pytest.raises(InputError, match="larger than the 3-byte limit"):
        await read(url, max_bytes=3, file_root=tmp_path)


@pytest.mark.parametrize(
    "escape",
    [
        "file:///etc/passwd",
        "file://{root}/../secret.txt",
        "file://{root}/%2e%2e/secret.txt",
        "file://{root}/%2E%2E%2Fsecret.txt",
        "file://{root}/out-link",
        "file://{root}/door/secret.txt",
    ],
)
async def test_file_urls_cannot_leave_the_root(tmp_path: Path, escape: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (root / "out-link").symlink_to(tmp_path / "secret.txt")
    (root / "door").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(InputError, match=r"input file:// URL leaves TM_FILE_ROOT \(.*root\): /"):
        await read(escape.format(root=root), file_root=root)


async def test_file_links_inside_the_root_are_read(tmp_path: Path) -> None:
    (tmp_path / "real.png").write_bytes(b"real")
    (tmp_path / "alias.png").symlink_to(tmp_path / "real.png")
    assert await read(f"file://{tmp_path}/alias.png", file_root=tmp_path) == b"real"


async def test_a_fifo_in_the_root_is_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")  # opened for reading, a FIFO would block until a writer came
    with pytest.raises(InputError, match="is not a regular file"):
        await read(f"file://{tmp_path}/pipe.png", file_root=tmp_path, timeout_s=2)


@pytest.mark.parametrize("url", ["ftp://host/x.png", "data:image/png;base64,AAAA", "x.png"])
async def test_unsupported_schemes(url: str) -> None:
    with pytest.raises(InputError, match="unsupported input URL scheme"):
        await read(url)


async def test_s3_ok_missing_and_too_large(s3_env: S3Server, s3_bucket: str, http: httpx.AsyncClient) -> None:
    s3_env.client().put_object(Bucket=s3_bucket, Key="in/a b.png", Body=b"s3 bytes")
    session = S3Client()
    url = f"s3://{s3_bucket}/in/a%20b.png"
    assert await read_input(url, http=http, policy=STRICT, max_bytes=MAX, s3=session) == b"s3 bytes"
    with pytest.raises(InputError, match="NoSuchKey"):
        await read_input(f"s3://{s3_bucket}/nope.png", http=http, policy=STRICT, max_bytes=MAX)
    with pytest.raises(InputError, match="NoSuchBucket"):
        await read_input("s3://no-such-bucket-here/x.png", http=http, policy=STRICT, max_bytes=MAX)
    with pytest.raises(InputError, match="larger than the 4-byte limit"):
        await read_input(url, http=http, policy=STRICT, max_bytes=4, s3=session)
    await session.close()


async def test_s3_wrong_or_missing_credentials_are_configuration_errors(
    s3_env: S3Server, s3_bucket: str, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Not the input's fault, and no retry can pass: the deployment's settings must change.
    url = f"s3://{s3_bucket}/x.png"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(
        ConfigurationError, match=r"^input s3://.*: SignatureDoesNotMatch \(.*check AWS_SECRET_ACCESS_KEY"
    ):
        await read_input(url, http=http, policy=STRICT, max_bytes=MAX)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigurationError) as caught:
        await read_input(url, http=http, policy=STRICT, max_bytes=MAX)
    assert str(caught.value) == (
        f"input {url}: S3 credentials are not configured: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(or AWS_PROFILE), and AWS_ENDPOINT_URL_S3 for a non-AWS server"
    )


async def test_s3_unreachable_endpoint_is_retryable(
    s3_env: S3Server, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed.getsockname()[1]}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries would only slow the test
        with pytest.raises(RetryableError, match="EndpointConnectionError"):
            await read_input("s3://some-bucket/x.png", http=http, policy=STRICT, max_bytes=MAX)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(200, None), (204, None), (304, InputError), (400, InputError), (404, InputError), (408, RetryableError),
     (429, RetryableError), (500, RetryableError), (503, RetryableError)],
)  # fmt: skip
def test_http_status_error(status: int, kind: type | None) -> None:
    error = http_status_error(status, "https://h/x", {}, role="output")
    assert (type(error) if error else None) is kind


def test_retry_after_s() -> None:
    assert retry_after_s(None) is None
    assert retry_after_s("12") == 12
    assert retry_after_s("soon") is None
    later = retry_after_s(format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True))
    assert later is not None and 25 < later <= 30
    assert retry_after_s("Mon, 01 Jan 2001 00:00:00 GMT") == 0
    # The server chooses it, so it is capped at the stage backoff's cap, in either form.
    assert retry_after_s("31536000") == retry_after_s("Fri, 01 Jan 2100 00:00:00 GMT") == MAX_BACKOFF_S == 30
    assert retry_after_s("9" * 400) == MAX_BACKOFF_S  # float("9" * 400) is inf
    assert retry_after_s("\u00b2") is None  # isdigit(), but no number float() reads
    assert retry_after_s("31536000", cap_s=math.inf) == 31536000
    assert stage.MAX_BACKOFF_S == MAX_BACKOFF_S  # one cap, whoever chose the delay


def test_safe_url_hides_signatures_and_passwords() -> None:
    assert safe_url("https://u:p@h/x.png?a=1") == "https://h/x.png?a=1"
    assert "abc" not in safe_url("https://h/x.png?X-Amz-Credential=k&X-Amz-Signature=abc")
