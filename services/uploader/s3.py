"""Write a task's output bytes to its destination: an S3 object, an HTTP PUT, or a local file.

Every write replaces whatever is there, so a redelivered upload message simply writes again.
Failures are mapped like the fetcher's reads (shared/egress/failures.py): the destination's own
fault is an InputError, the network's or the server's a RetryableError, and S3 settings that cannot
work (no credentials, a malformed endpoint, keys or permissions the server refuses) a ConfigurationError
that fails the task at once, saying what to set.
"""

from __future__ import annotations

import asyncio
import errno
import os
import tempfile
from pathlib import Path

import httpx

from shared.contracts.destinations import HttpPut, LocalFile, S3Target, parse_destination
from shared.egress.bodies import read_body
from shared.egress.failures import S3_ERRORS, http_status_error, http_transport_error, s3_error, safe_url
from shared.egress.localfiles import target_within
from shared.egress.netguard import AddressPolicy
from shared.egress.s3 import S3Client, s3_client
from shared.runtime.errors import InputError, RetryableError

ANSWER_MAX_BYTES = 64 * 1024  # a PUT target's answer we read (and forget) to keep its connection
# Disk trouble that may clear up by itself; any other OSError (permissions, not a directory) will not.
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EAGAIN, errno.EDQUOT})


async def write_output(
    url: str,
    data: bytes,
    content_type: str,
    *,
    http: httpx.AsyncClient,
    policy: AddressPolicy,
    s3: S3Client | None,
    s3_endpoint: str | None,
    deadline_s: float | None = None,
    file_root: Path | None = None,
) -> None:
    """Store `data` at `url` (see destinations.py for the URL forms); raises a PermanentError or RetryableError.

    `s3_endpoint` is the deployment's S3 endpoint URL, used only to recognise path-style URLs on it;
    the S3 client itself resolves its endpoint from the standard AWS environment and config files, and
    is not subject to `policy` (the operator chose it). PUT URLs are: `http` must be a
    `shared.egress.transport.guarded_client` with the same `policy`. `deadline_s` bounds a whole PUT.
    `file_root` (TM_FILE_ROOT) is the directory file:// URLs must stay in; None refuses them all.
    """
    match parse_destination(url, s3_endpoint=s3_endpoint):
        case S3Target(bucket, key):
            async with s3_client(s3) as client:
                await _put_s3(bucket, key, data, content_type, client)
        case HttpPut(put_url):
            policy.check_url(put_url, "output")
            deadline = asyncio.timeout(deadline_s)
            try:
                async with deadline:
                    await _put_http(put_url, data, content_type, http)
            except TimeoutError:
                if not deadline.expired():
                    raise
                # The destination is slow, not wrong: the upload is retried, within the retry budget.
                raise RetryableError(
                    f"output URL did not take the upload within the {deadline_s:g} s limit (TM_FETCH_TIMEOUT_S): "
                    f"{safe_url(put_url)}"
                ) from None
        case LocalFile(path):
            target = target_within(file_root, path)
            await asyncio.to_thread(_write_file, target, data, file_root)


async def _put_s3(bucket: str, key: str, data: bytes, content_type: str, s3: S3Client) -> None:
    try:
        await (await s3.client()).put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
    except S3_ERRORS as exc:
        raise s3_error(exc, "output", f"s3://{bucket}/{key}", bucket) from exc


async def _put_http(url: str, data: bytes, content_type: str, http: httpx.AsyncClient) -> None:
    try:
        # No redirects: a presigned URL's signature is for this URL only, and a PUT body is not
        # something to replay to wherever a server points.
        headers = {"Content-Type": content_type}
        async with http.stream("PUT", url, content=data, headers=headers, follow_redirects=False) as response:
            status, answer_headers = response.status_code, response.headers
            await _drain_answer(response)
    except httpx.InvalidURL as exc:
        raise InputError(f"invalid output URL ({exc}): {safe_url(url)}") from exc
    except httpx.HTTPError as exc:
        raise http_transport_error(exc, url, role="output") from exc
    if error := http_status_error(status, url, answer_headers, role="output"):
        raise error


async def _drain_answer(response: httpx.Response) -> None:
    """Read a short answer to its end, so that its connection is kept for the next upload (closing it
    unread would end the connection); a long one (perhaps a compression bomb) is dropped unread."""
    try:
        await read_body(response, ANSWER_MAX_BYTES, role="output")
    except InputError:
        pass


def _write_file(path: Path, data: bytes, root: Path | None) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file.

    `path` is `target_within(root, ...)`: its directory is a real path inside `root`. The rename
    replaces a link at `path` rather than writing through it.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Checked again once the directories exist: one made a link since the check would show here.
        if target_within(root, path).parent != path.parent:
            raise InputError(f"output directory {path.parent} changed while it was written to, refused")
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), 0o644)  # mkstemp's 0600 would hide the output from other readers
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        error = RetryableError if exc.errno in _TRANSIENT_ERRNOS else InputError
        raise error(f"cannot write output file {path}: {exc.strerror or exc}") from exc
