"""Image bytes between stages: in the work message when small, else in the JetStream object store.

An image of at most TM_INLINE_IMAGE_MAX_BYTES travels in the message that hands the task on
(`TaskMessage.input_image` / `output_image`): it is stored once, with the message, and goes when the
message is acknowledged. That saves the object store's round trips (a put is an info lookup, a chunk
and a meta message; a read two direct gets or more; a delete an info lookup, a meta message and a
purge), about a third of a small task's NATS traffic. A larger image goes to the object store under
its task's deterministic key, named in `stored_objects`, and is deleted when the task ends.

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
from typing import TYPE_CHECKING, Any, Literal

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from shared.messages import TaskMessage
from shared.runtime.errors import RetryableError
from shared.wire import BLOBS_BUCKET, input_object, output_object

if TYPE_CHECKING:
    from shared.nats import Topology

Image = Literal["input", "output"]

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


# Room left in a message for its other fields and headers, under the server's max_payload.
MESSAGE_HEADROOM_BYTES = 16 * 1024


async def pass_on(
    topology: Topology, task: TaskMessage, which: Image, data: bytes, inline_max_bytes: int
) -> dict[str, Any]:
    """The message fields that hand `data` (the task's `which` image) to the next stage: the bytes
    themselves when they fit in a message, else the name of the object they were stored under."""
    field = f"{which}_image"
    if len(data) <= min(inline_max_bytes, topology.nc.max_payload - MESSAGE_HEADROOM_BYTES):
        return {field: data}
    name = input_object(task.task_id) if which == "input" else output_object(task.task_id)
    await write_blob(topology.blobs, name, data)
    return {field: None, "stored_objects": sorted({*task.stored_objects, name})}


async def read_image(js: JetStreamContext, task: TaskMessage, which: Image) -> bytes:
    """The task's `which` image: from its message, or from the object store when it was too large."""
    carried = task.input_image if which == "input" else task.output_image
    if carried is not None:
        return carried
    return await read_blob(js, input_object(task.task_id) if which == "input" else output_object(task.task_id))


async def discard_task_blobs(blobs: ObjectStore, task_id: str) -> None:
    """Remove a task's intermediate objects; missing ones are fine (idempotent)."""
    for name in (input_object(task_id), output_object(task_id)):
        try:
            await blobs.delete(name)
        except (ObjectNotFoundError, NotFoundError):
            pass
