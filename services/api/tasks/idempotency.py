"""Idempotency-Key: the same key (with the same request) returns the same task.

Keys are hashed and kept in a KV bucket with a TTL (TM_IDEMPOTENCY_TTL_S). The first submission
claims the key with a create (so two racing submissions cannot both win); later ones read the
task id it maps to. Reusing a key for a different request is a client bug: 409.
"""

from __future__ import annotations

import hashlib
import json

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.api.schemas import SubmitTaskRequest


class IdempotencyConflictError(Exception):
    """The key was used before for a different request."""


def _key(idempotency_key: str) -> str:
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


def _fingerprint(body: SubmitTaskRequest) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


async def claim(kv: KeyValue, idempotency_key: str, body: SubmitTaskRequest, task_id: str) -> str | None:
    """Claim the key for `task_id`; return the task id that already holds it, or None if we got it."""
    record = json.dumps({"task_id": task_id, "request": _fingerprint(body)}).encode()
    key = _key(idempotency_key)
    try:
        await kv.create(key, record)
        return None
    except KeyWrongLastSequenceError:
        pass
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:  # expired in between: claim it again
        await kv.create(key, record)
        return None
    existing = json.loads(entry.value or b"{}")
    if existing.get("request") != _fingerprint(body):
        raise IdempotencyConflictError(f"Idempotency-Key {idempotency_key!r} was used for a different request")
    return str(existing["task_id"])


async def release(kv: KeyValue, idempotency_key: str) -> None:
    """Forget a claim whose submission failed, so a retry with the same key can succeed."""
    try:
        await kv.delete(_key(idempotency_key))
    except Exception:
        pass
