"""Is the output already there? Asked only when an upload message is delivered again.

A worker killed after its upload but before recording SUCCESS gets its message redelivered; the
upload would then happen twice. Where the destination can be read back, a redelivery first checks
whether it already holds exactly these bytes, and skips the upload if so:
S3 objects by size and MD5 (the ETag of a single-part PUT), local files by content, and plain
HTTP PUT targets by a GET of the same URL. Presigned URLs cannot be read with their PUT signature:
those are written again (the same bytes to the same key, so the result is the same).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import aioboto3
import httpx

from services.uploader.destinations import HttpPut, LocalFile, S3Target, parse_destination

_SIGNED = {"x-amz-signature", "signature"}


async def already_delivered(
    url: str, data: bytes, *, http: httpx.AsyncClient, s3_session: aioboto3.Session, s3_endpoint: str | None
) -> bool:
    """True only when the destination certainly holds `data`; any doubt (or error) is False."""
    try:
        destination = parse_destination(url, s3_endpoint=s3_endpoint)
        if isinstance(destination, S3Target):
            async with s3_session.client("s3") as s3:
                head = await s3.head_object(Bucket=destination.bucket, Key=destination.key)
            etag = str(head.get("ETag", "")).strip('"')
            return head.get("ContentLength") == len(data) and etag == hashlib.md5(data).hexdigest()
        if isinstance(destination, LocalFile):
            return await asyncio.to_thread(_same_file, destination.path, data)
        if isinstance(destination, HttpPut):
            if {name.lower() for name, _ in parse_qsl(urlsplit(url).query)} & _SIGNED:
                return False
            response = await http.get(url)
            return response.status_code == 200 and response.content == data
    except Exception:
        return False
    return False


def _same_file(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False
