"""Finding tasks: GET /api/v1/tasks, newest first, filtered, a page at a time (services/api/tasks/index.py).

The query is declared once, as TaskQuery: FastAPI reads it from the URL here, and the dashboard's search
(services/api/dashboard/taskpage.py) reads its form with `read_query`, so both take the same names under
the same rules and refuse the same values with the same words.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ValidationError

from services.api.deps import ContextDep
from services.api.errors import describe
from services.api.schemas import error
from services.api.tasks.index import Filters, TaskIndex, TaskSummary, decode_cursor, encode_cursor
from shared.contracts.catalog import MODELS
from shared.messages import Category
from shared.taskstate.status import TaskState, format_time

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])
MAX_LIMIT = 200
LIST_ERRORS: dict[int | str, dict] = {
    400: error("A filter, the limit or the cursor is not valid; the detail names it"),
    503: error("The task list is still being read from NATS (seconds after the API starts)"),
}
TIME = {"format": "date-time"}


class TaskQuery(BaseModel):
    """The filters, page size and cursor of a task list (FastAPI documents each field as a query parameter)."""

    state: Annotated[list[TaskState] | None, Query(description="Only tasks in these states (repeat it)")] = None
    priority: Annotated[int | None, Query(ge=0, le=10)] = None
    category: Annotated[Category | None, Query()] = None
    model: Annotated[str | None, Query(description="The model that ran, or the one asked for")] = None
    submitted_since: Annotated[
        str | None, Query(description="ISO 8601 with a time zone, inclusive", json_schema_extra=TIME)
    ] = None
    submitted_until: Annotated[
        str | None, Query(description="ISO 8601 with a time zone, exclusive", json_schema_extra=TIME)
    ] = None
    id_prefix: Annotated[str | None, Query(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")] = None
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50
    cursor: Annotated[str | None, Query(max_length=200)] = None


class TaskList(BaseModel):
    tasks: list[TaskSummary]
    next_cursor: str | None  # pass as `cursor` for the next (older) page; null on the last page


class QueryError(ValueError):
    """A query this API refuses (a 400); the text names the parameter: `query.<name>: why`."""


def read_query(pairs: Iterable[tuple[str, str]]) -> TaskQuery:
    """A query from a URL's (name, value) pairs, checked as FastAPI checks it for GET /api/v1/tasks: `state`
    may repeat, the last of any other name counts, unknown names are ignored; QueryError with the API's text."""
    values: dict[str, Any] = {}
    for name, value in pairs:
        if name == "state":
            values.setdefault(name, []).append(value)
        else:
            values[name] = value
    try:
        return TaskQuery.model_validate(values)
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]
        raise QueryError(describe(errors)) from exc


def _moment(name: str, value: str | None) -> str | None:
    """An ISO 8601 time with its zone, as the store writes times; QueryError naming the parameter otherwise
    (a bare number is no time here, though pydantic would read it as a Unix timestamp)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise QueryError(f"query.{name}: not an ISO 8601 time with a time zone (e.g. 2026-12-07T10:00:00Z)")
    return format_time(moment)


def find(index: TaskIndex, query: TaskQuery) -> TaskList:
    """One page of the tasks `query` asks for, newest first; QueryError for what its types let through
    (an unknown model, a cursor this API did not hand out, a time without a zone)."""
    if query.model is not None and query.model not in MODELS and not query.model.startswith("lanczos"):
        raise QueryError(f"query.model: unknown model {query.model!r}")
    try:
        after = decode_cursor(query.cursor) if query.cursor else None
    except ValueError as exc:
        raise QueryError(f"query.cursor: {exc}") from exc
    filters = Filters(
        states=frozenset(query.state or ()),
        priority=query.priority,
        category=query.category.value if query.category else None,
        model=query.model,
        since=_moment("submitted_since", query.submitted_since),
        until=_moment("submitted_until", query.submitted_until),
        id_prefix=query.id_prefix,
    )
    rows, more = index.page(filters, query.limit, after)
    return TaskList(tasks=rows, next_cursor=encode_cursor(rows[-1].key) if more and rows else None)


@router.get("", response_model=TaskList, responses=LIST_ERRORS)
async def list_tasks(ctx: ContextDep, query: Annotated[TaskQuery, Query()]) -> TaskList:
    """List tasks, newest first (by submission time), with filters and cursor pagination."""
    if not ctx.index.ready.is_set():
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the task list is still loading, retry shortly")
    try:
        return find(ctx.index, query)
    except QueryError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
