"""Is the output already there? Asked only when an upload message is delivered again.

A worker killed after its upload but before recording SUCCESS gets its message redelivered; the
upload would then happen twice. Where the destination can be read back, a redelivery first checks
whether it already holds exactly these bytes, and skips the upload if so:
S3 objects by size and MD5 (the ETag of a single-part PUT), local files by content, and plain
HTTP PUT targets by a GET of the same URL. Presigned URLs cannot be read with their PUT signature:
those are written again (the same bytes to the same key, so the result is the same).
The GET's answer is the client's server talking: it is read at most one byte past our output's
length (decoded, shared/egress/bodies.py) within the upload's deadline, and any doubt means "upload again".
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx

from shared.contracts.destinations import HttpPut, LocalFile, S3Target, parse_destination
from shared.egress.bodies import read_body
from shared.egress.localfiles import target_within
from shared.egress.s3 import S3Client, s3_client

_SIGNED = {"x-amz-signature", "signature"}


async def already_delivered(
    url: str,
    data: bytes,
    *,
    http: httpx.AsyncClient,
    s3: S3Client | None,
    s3_endpoint: str | None,
    file_root: Path | None = None,
    deadline_s: float | None = None,
) -> bool:
    """True only when the destination certainly holds `data`; any doubt (or error) is False.

    A local file is looked at only where the upload may write it: inside `file_root` (TM_FILE_ROOT).
    `deadline_s` bounds the whole read-back of an HTTP PUT target (the uploader's TM_FETCH_TIMEOUT_S).
    """
    try:
        destination = parse_destination(url, s3_endpoint=s3_endpoint)
        if isinstance(destination, S3Target):
            async with s3_client(s3) as client:
                head = await (await client.client()).head_object(Bucket=destination.bucket, Key=destination.key)
            etag = str(head.get("ETag", "")).strip('"')
            return head.get("ContentLength") == len(data) and etag == hashlib.md5(data).hexdigest()
        if isinstance(destination, LocalFile):
            return await asyncio.to_thread(_same_file, target_within(file_root, destination.path), data)
        if isinstance(destination, HttpPut):
            if {name.lower() for name, _ in parse_qsl(urlsplit(url).query)} & _SIGNED:
                return False
            async with asyncio.timeout(deadline_s), http.stream("GET", url) as response:
                # A longer body cannot be ours: read_body stops one byte past len(data) and raises.
                return response.status_code == 200 and await read_body(response, len(data), role="output") == data
    except Exception:
        return False
    return False


def _same_file(path: Path, data: bytes) -> bool:
    # Not through a link: the upload replaces one with a regular file, so a link there is not its output.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(fd)
            return stat.S_ISREG(info.st_mode) and info.st_size == len(data) and file.read(len(data) + 1) == data
    except OSError:
        return False
