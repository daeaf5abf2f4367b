"""A task's state changes as Server-Sent Events: GET /api/v1/tasks/{task_id}/events.

The stream replays the task's change events stored in the TM_EVENTS stream, then follows live ones
(services/api/tasks/changefeed.py), and ends after the terminal one. Each event's
`id:` is its stream sequence, so a client that reconnects with `Last-Event-ID` (browsers' EventSource
does it by itself) resumes after the last event it saw; a new EventSource, which cannot set headers,
names it in the URL instead (`?last_event_id=N`). A comment line every TM_EVENTS_KEEPALIVE_S
keeps proxies from closing a quiet connection.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import nats.errors
import structlog
from fastapi import APIRouter, Header, HTTPException, Query, status
from fastapi.responses import StreamingResponse

from services.api.deps import ContextDep
from services.api.schemas import error
from services.api.tasks.changefeed import ChangeFeed
from services.api.tasks.routes import TASK_ERRORS, valid_id
from shared.taskstate.events import EventKind, Snapshot, TaskEvent
from shared.taskstate.status import TaskState, TaskStatus
from shared.taskstate.store import TaskStore

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])
log = structlog.get_logger()

# A task already ended when the stream opened: how long to wait for more of its replay before
# deciding its terminal change event is missing (a task that ended before change events existed).
ENDED_GRACE_S = 1.0
MAX_SEQUENCE = 2**64 - 1  # JetStream's sequences are uint64
# OpenAPI 3.1 (no `itemSchema` yet): the media type's schema describes one event.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "the event's TM_EVENTS stream sequence (send it as Last-Event-ID)"},
        "event": {"type": "string", "enum": [kind.value for kind in EventKind]},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "a TaskEvent"},
    },
    "required": ["event", "data"],
}
EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        "description": "The task's change events (docs/events.md), past then live, until the terminal one",
    },
    400: error("Last-Event-ID is not a stream sequence number (1 to 2^64-1)"),
    **TASK_ERRORS,
}


def frame(kind: str, data: bytes, sequence: int | None) -> bytes:
    """One SSE message: `data` is the event's JSON as stored (no raw newlines: a single `data:` line)."""
    head = f"id: {sequence}\n" if sequence is not None else ""
    return f"{head}event: {kind}\ndata: ".encode() + data + b"\n\n"


def resume_after(last_event_id: str | None) -> int:
    """The stream sequence a Last-Event-ID names (0: none, start from the first event); 400 for
    anything else. ASCII digits only: str.isdigit() and int() also take other scripts' digits."""
    text = (last_event_id or "").strip()
    if not text:
        return 0
    # A length check before int(): it refuses more than 4,300 digits with a ValueError (a 500 here).
    if not (text.isascii() and text.isdigit() and len(text.lstrip("0")) <= len(str(MAX_SEQUENCE))):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Last-Event-ID: must be an event id (a stream sequence)")
    sequence = int(text.lstrip("0") or "0")
    if not 1 <= sequence <= MAX_SEQUENCE:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"Last-Event-ID: must be from 1 to {MAX_SEQUENCE}")
    return sequence


async def _ended(store: TaskStore, task_id: str) -> tuple[bool, bytes]:
    """(whether to end the stream, a last frame): the task is gone, or ended without its event in sight."""
    found = await store.get_with_revision(task_id)
    if found is None:
        return True, b""
    current, revision = found
    if not current.state.terminal:
        return False, b""
    unknown_before = Snapshot(None, Snapshot.of(current).stages, current.progress, current.run)
    event = TaskEvent.between(unknown_before, current, revision)
    return True, frame(event.kind.value, event.to_json(), None) if event is not None else b""


async def _follow(
    feed: ChangeFeed, store: TaskStore, opened: TaskStatus, opened_revision: int, keepalive_s: float
) -> AsyncIterator[bytes]:
    task_id, last_revision = opened.task_id, 0
    try:
        yield b": events of task " + task_id.encode() + b"\n\n"  # the headers go out at once
        wait = min(ENDED_GRACE_S, keepalive_s) if opened.state.terminal else keepalive_s
        while True:
            try:
                data, sequence = await feed.next(wait)
            except nats.errors.TimeoutError:
                finished, last = await _ended(store, task_id)
                if finished:
                    yield last
                    return
                yield b": keep-alive\n\n"
                wait = keepalive_s
                continue
            try:
                # The few fields this loop decides on; the event goes out as it was stored, not re-encoded.
                event = json.loads(data)
                kind, revision, run, state = event["kind"], int(event["revision"]), int(event["run"]), event["state"]
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("bad_change_event", task_id=task_id, sequence=sequence, error=repr(exc))
                continue
            if revision >= opened_revision:
                # The feed subscribed before the entry was read: every later change arrives live.
                feed.caught_up()
            if revision <= last_revision:
                continue  # published late by an earlier writer: a later change was already sent
            last_revision = revision
            yield frame(kind, data.strip(), sequence)
            if TaskState(state).terminal and run >= opened.run:  # not the end of a run an operator replayed since
                return
    finally:
        with anyio.CancelScope(shield=True):  # also when the client went away (the stream is cancelled)
            try:
                await feed.close()
            except Exception as exc:
                log.warning("events_unsubscribe_failed", task_id=task_id, error=repr(exc))


@router.get("/{task_id}/events", response_class=StreamingResponse, responses=EVENTS_RESPONSES)
async def task_events(
    task_id: str,
    ctx: ContextDep,
    last_event_id: Annotated[
        str | None, Header(description="Resume after this event (its `id:`, a stream sequence)")
    ] = None,
    resume_from: Annotated[
        str | None,
        Query(
            alias="last_event_id",
            description="The same as the Last-Event-ID header, for a new EventSource (which cannot set"
            " headers); the header wins when both are sent",
        ),
    ] = None,
) -> StreamingResponse:
    """Stream a task's state changes (Server-Sent Events) until it ends."""
    # The header first: an EventSource opened with ?last_event_id=N keeps that URL when it reconnects,
    # and the header it then sends by itself names a later event.
    after = resume_after(last_event_id or resume_from)
    if not valid_id(task_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Task {task_id} not found")
    # Subscribed before the entry is read, so every change after the revision read comes live; the
    # stored ones are read back only until that revision's event (ChangeFeed.caught_up).
    feed = await ChangeFeed(ctx.topology.nc, task_id, after).open()
    try:
        found = await ctx.store.get_with_revision(task_id)
    except BaseException:
        await feed.close()
        raise
    if found is None:
        await feed.close()
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Task {task_id} not found")
    body = _follow(feed, ctx.store, found[0], found[1], ctx.settings.events_keepalive_s)
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
