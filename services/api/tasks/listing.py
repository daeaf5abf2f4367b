"""Finding tasks: GET /api/v1/tasks, newest first, filtered, a page at a time (services/api/tasks/index.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel

from services.api.deps import ContextDep
from services.api.schemas import error
from services.api.tasks.index import Filters, TaskSummary, decode_cursor, encode_cursor
from shared.contracts.catalog import MODELS
from shared.messages import Category
from shared.taskstate.status import TaskState, format_time

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])
MAX_LIMIT = 200
LIST_ERRORS: dict[int | str, dict] = {
    400: error("A filter, the limit or the cursor is not valid; the detail names it"),
    503: error("The task list is still being read from NATS (seconds after the API starts)"),
}


class TaskList(BaseModel):
    tasks: list[TaskSummary]
    next_cursor: str | None  # pass as `cursor` for the next (older) page; null on the last page


def _moment(name: str, value: str | None) -> str | None:
    """An ISO 8601 time with its zone, as the store writes times; a 400 naming the parameter otherwise
    (a bare number is no time here, though pydantic would read it as a Unix timestamp)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"query.{name}: not an ISO 8601 time with a time zone (e.g. 2026-12-07T10:00:00Z)",
        )
    return format_time(moment)


TIME = {"format": "date-time"}


@router.get("", response_model=TaskList, responses=LIST_ERRORS)
async def list_tasks(
    ctx: ContextDep,
    state: Annotated[list[TaskState] | None, Query(description="Only tasks in these states (repeat it)")] = None,
    priority: Annotated[int | None, Query(ge=0, le=10)] = None,
    category: Annotated[Category | None, Query()] = None,
    model: Annotated[str | None, Query(description="The model that ran, or the one asked for")] = None,
    submitted_since: Annotated[
        str | None, Query(description="ISO 8601 with a time zone, inclusive", json_schema_extra=TIME)
    ] = None,
    submitted_until: Annotated[
        str | None, Query(description="ISO 8601 with a time zone, exclusive", json_schema_extra=TIME)
    ] = None,
    id_prefix: Annotated[str | None, Query(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> TaskList:
    """List tasks, newest first (by submission time), with filters and cursor pagination."""
    if not ctx.index.ready.is_set():
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the task list is still loading, retry shortly")
    if model is not None and model not in MODELS and not model.startswith("lanczos"):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"query.model: unknown model {model!r}")
    try:
        after = decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"query.cursor: {exc}") from exc
    filters = Filters(
        states=frozenset(state or ()),
        priority=priority,
        category=category.value if category else None,
        model=model,
        since=_moment("submitted_since", submitted_since),
        until=_moment("submitted_until", submitted_until),
        id_prefix=id_prefix,
    )
    rows, more = ctx.index.page(filters, limit, after)
    return TaskList(
        tasks=rows,
        next_cursor=encode_cursor(rows[-1].key) if more and rows else None,
    )
