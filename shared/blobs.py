"""Image bytes between stages live in the JetStream object store under deterministic keys.

Reads use direct gets (the object's meta message, then its chunks) rather than nats-py's
ObjectStore.get, which creates an ordered consumer per read: the server keeps each ~5 s, and a
stream refuses its 1001st consumer, so above ~200 reads/s reads failed with "maximum consumers limit
reached" (bench/README.md). Direct gets also cost about half the server CPU.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from shared.errors import RetryableError
from shared.messages import BLOBS_BUCKET, input_object, output_object

BLOB_READ_TIMEOUT_S = 30.0
_STREAM = f"OBJ_{BLOBS_BUCKET}"


async def read_blob(js: JetStreamContext, name: str) -> bytes:
    """The object's bytes, checked against its SHA-256. A missing or half-deleted object is a
    RetryableError: the previous stage stored it before publishing, so it was cleaned up concurrently
    (DELETE, revoke) and the retry's state checks decide what happens."""
    missing = RetryableError(f"intermediate object {name} is missing")
    meta_subject = f"$O.{BLOBS_BUCKET}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
    try:
        async with asyncio.timeout(BLOB_READ_TIMEOUT_S):
            info = json.loads((await js.get_msg(_STREAM, subject=meta_subject, direct=True)).data or b"{}")
            if info.get("deleted") or not info.get("nuid"):
                raise missing
            chunk_subject = f"$O.{BLOBS_BUCKET}.C.{info['nuid']}"
            data, seq = bytearray(), 1
            for _ in range(info.get("chunks") or 0):
                chunk = await js.get_msg(_STREAM, seq=seq, subject=chunk_subject, direct=True, next=True)
                data += chunk.data or b""
                seq = (chunk.seq or seq) + 1
    except NotFoundError as exc:
        raise missing from exc
    except TimeoutError as exc:
        raise RetryableError(f"reading intermediate object {name} timed out") from exc
    digest = info.get("digest", "").removeprefix("SHA-256=")
    if digest and base64.urlsafe_b64decode(digest) != hashlib.sha256(data).digest():
        raise missing  # chunks purged under us (DELETE)
    return bytes(data)


async def write_blob(blobs: ObjectStore, name: str, data: bytes) -> None:
    await blobs.put(name, data)


async def discard_task_blobs(blobs: ObjectStore, task_id: str) -> None:
    """Remove a task's intermediate objects; missing ones are fine (idempotent)."""
    for name in (input_object(task_id), output_object(task_id)):
        try:
            await blobs.delete(name)
        except (ObjectNotFoundError, NotFoundError):
            pass
