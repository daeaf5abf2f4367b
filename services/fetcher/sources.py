"""Read a task's input bytes from where its URL points: http(s)://, s3://bucket/key or file://.

Every failure leaves here as a TaskError (mapped in shared/egress/failures.py), so the worker maps it to an
acknowledgement in one place.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from shared.egress.bodies import read_body
from shared.egress.failures import S3_ERRORS, http_status_error, http_transport_error, s3_error, safe_url
from shared.egress.localfiles import file_url_path, resolve_within
from shared.egress.netguard import AddressPolicy
from shared.egress.s3 import S3Client, s3_client
from shared.runtime.errors import InputError, RetryableError

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 64 * 1024


async def read_input(
    url: str,
    *,
    http: httpx.AsyncClient,
    policy: AddressPolicy,
    max_bytes: int,
    max_redirects: int = 5,
    deadline_s: float | None = None,
    s3: S3Client | None = None,
    file_root: Path | None = None,
) -> bytes:
    """The bytes at `url`, at most `max_bytes` of them; raises InputError, RetryableError, or (S3 settings that
    cannot work: no credentials, keys or permissions the server refuses) ConfigurationError.

    `http` must be a `shared.egress.transport.guarded_client` with the same `policy`, which vets every address
    it connects to; here each URL (the given one and every redirect hop) is checked before its request.
    `deadline_s` bounds a whole HTTP download, redirects included, however slowly its bytes trickle in.
    `file_root` (TM_FILE_ROOT) is the directory file:// URLs must stay in; None refuses them all.
    """
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise InputError(f"invalid input URL ({exc}): {safe_url(url)}") from exc
    if scheme in ("http", "https"):
        deadline = asyncio.timeout(deadline_s)
        try:
            async with deadline:
                return await _read_http(url, http, policy, max_bytes, max_redirects)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise InputError(
                f"input URL did not finish downloading within the {deadline_s:g} s limit "
                f"(TM_FETCH_TIMEOUT_S), refused: {safe_url(url)}"
            ) from None
    if scheme == "s3":
        async with s3_client(s3) as client:
            return await _read_s3(url, client, max_bytes)
    if scheme == "file":
        return await asyncio.to_thread(_read_file, url, max_bytes, file_root)
    raise InputError(f"unsupported input URL scheme {scheme or '(none)'!r} (http, https, s3): {safe_url(url)}")


async def _read_http(
    url: str, http: httpx.AsyncClient, policy: AddressPolicy, max_bytes: int, max_redirects: int
) -> bytes:
    # Redirects are followed here rather than by httpx so that every hop gets the URL check.
    current = url
    for _ in range(max_redirects + 1):
        policy.check_url(current, "input")
        try:
            async with http.stream("GET", current, follow_redirects=False) as response:
                location = response.headers.get("location")
                if response.status_code in _REDIRECT_STATUSES and location:
                    current = _redirect_target(current, location)
                    continue
                if error := http_status_error(response.status_code, current, response.headers, role="input"):
                    raise error
                # Bounded after decoding: a few KB of gzip can mean gigabytes (shared/egress/bodies.py).
                return await read_body(response, max_bytes, role="input", setting="TM_FETCH_MAX_BYTES")
        except httpx.InvalidURL as exc:
            raise InputError(f"invalid input URL ({exc}): {safe_url(current)}") from exc
        except httpx.ConnectTimeout as exc:
            raise RetryableError(
                f"input URL {safe_url(current)}: no connection within {http.timeout.connect} s "
                "(TM_FETCH_CONNECT_TIMEOUT_S)"
            ) from exc
        except httpx.HTTPError as exc:
            raise http_transport_error(exc, current, role="input") from exc
    raise InputError(f"input URL redirected more than {max_redirects} times (TM_FETCH_MAX_REDIRECTS): {safe_url(url)}")


def _redirect_target(current: str, location: str) -> str:
    try:
        target = urljoin(current, location)
        scheme = urlsplit(target).scheme.lower()
    except ValueError as exc:
        raise InputError(f"input URL redirected to an invalid URL ({exc}): {safe_url(current)}") from exc
    if scheme not in ("http", "https"):
        raise InputError(f"input URL redirected to a non-HTTP URL: {safe_url(target)}")
    return target


async def _read_s3(url: str, s3: S3Client, max_bytes: int) -> bytes:
    parts = urlsplit(url)
    bucket, key = parts.netloc, unquote(parts.path.removeprefix("/"))
    if not bucket or not key:
        raise InputError(f"s3 input URL needs a bucket and a key: {url}")
    try:
        response = await (await s3.client()).get_object(Bucket=bucket, Key=key)
        body = response["Body"]
        async with body:
            chunks = body.iter_chunks(_CHUNK_BYTES)
            return await _read_limited(chunks, response.get("ContentLength"), max_bytes, url)
    except S3_ERRORS as exc:
        raise s3_error(exc, "input", url, bucket) from exc


def _read_file(url: str, max_bytes: int, root: Path | None) -> bytes:
    path = resolve_within(root, file_url_path(url, "input"), "input")
    try:
        # The path was checked with every link resolved: a link put in its place since is not followed
        # (O_NOFOLLOW), and a FIFO or device found there is neither waited on nor read (O_NONBLOCK).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InputError(f"input file {path} is not a regular file")
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"cannot read input file {path}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise InputError(f"input is larger than the {max_bytes}-byte limit (TM_FETCH_MAX_BYTES): {url}")
    return data


async def _read_limited(chunks: AsyncIterator[bytes], declared: int | None, max_bytes: int, url: str) -> bytes:
    """Collect `chunks`, giving up as soon as the total (or the declared length) passes `max_bytes`."""
    too_large = InputError(f"input is larger than the {max_bytes}-byte limit (TM_FETCH_MAX_BYTES): {safe_url(url)}")
    if declared is not None and declared > max_bytes:
        raise too_large
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > max_bytes:
            raise too_large
    return bytes(data)
