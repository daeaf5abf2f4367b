"""Image bytes between stages live in the JetStream object store under deterministic keys."""

from __future__ import annotations

import asyncio

from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from shared.errors import RetryableError
from shared.messages import input_object, output_object

BLOB_READ_TIMEOUT_S = 30.0


async def read_blob(blobs: ObjectStore, name: str) -> bytes:
    try:
        async with asyncio.timeout(BLOB_READ_TIMEOUT_S):  # nats.py waits for chunks without a deadline
            result = await blobs.get(name)
    except (ObjectNotFoundError, NotFoundError) as exc:
        # The previous stage stored it before publishing; a missing blob means it was cleaned up
        # concurrently (DELETE) or lost with a store: retrying lets the state checks decide.
        raise RetryableError(f"intermediate object {name} is missing") from exc
    except TimeoutError as exc:
        raise RetryableError(f"reading intermediate object {name} timed out") from exc
    return result.data or b""


async def write_blob(blobs: ObjectStore, name: str, data: bytes) -> None:
    await blobs.put(name, data)


async def discard_task_blobs(blobs: ObjectStore, task_id: str) -> None:
    """Remove a task's intermediate objects; missing ones are fine (idempotent)."""
    for name in (input_object(task_id), output_object(task_id)):
        try:
            await blobs.delete(name)
        except (ObjectNotFoundError, NotFoundError):
            pass
