"""Every stored task, kept in memory for listing: newest first, filtered, a page at a time.

Each API process builds its own copy from the task bucket (a KV watch: the latest value of every key,
then every write as it happens), so a list never reads the bucket and costs the same with 100 or
100,000 tasks stored (bench/list_tasks.py). A row holds what the filters and a list entry need;
GET /api/v1/tasks/{id} still reads the whole status from the bucket. A copy can be a few milliseconds
behind the bucket, as any watcher is.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter

import structlog
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from shared.taskstate.status import TaskState, TaskStatus, parse_time

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)  # a plain class: ~1.5 KB a task in memory, a pydantic model ~2.5
class TaskSummary:
    """What a list shows of one task, and what its filters read (GET /api/v1/tasks/{id} has the whole status)."""

    task_id: str
    state: TaskState
    priority: int
    category: str | None
    model: str | None
    submitted_at: str
    completed_at: str | None
    run: int
    input_url: str | None
    output_url: str | None
    error: str | None

    @property
    def key(self) -> tuple[str, str]:
        """Its place in the list: by submission time, ties broken by id (both sort as text)."""
        return self.submitted_at, self.task_id

    @property
    def facets(self) -> list[tuple[str, object]]:
        """The (field, value) pairs a filter can ask for by equality."""
        pairs: list[tuple[str, object]] = [("state", self.state), ("priority", self.priority)]
        if self.category is not None:
            pairs.append(("category", self.category))
        if self.model is not None:
            pairs.append(("model", self.model))
        return pairs

    @classmethod
    def of(cls, status: TaskStatus) -> TaskSummary:
        result = status.result or {}
        return cls(
            task_id=status.task_id,
            state=status.state,
            priority=status.priority,
            category=status.classification.category.value if status.classification else None,
            model=result.get("model") or status.kwargs.get("model"),
            submitted_at=status.submitted_at,
            completed_at=status.completed_at,
            run=status.run,
            input_url=status.input_url,
            output_url=status.output_url,
            error=status.error,
        )


@dataclass(frozen=True)
class Filters:
    states: frozenset[TaskState] = frozenset()
    priority: int | None = None
    category: str | None = None
    model: str | None = None
    since: str | None = None  # submitted at or after (formatted as the store writes times)
    until: str | None = None  # submitted before
    id_prefix: str | None = None

    def facets(self) -> list[list[tuple[str, object]]]:
        """Each equality filter as the (field, value) pairs any of which a row must have."""
        asked: list[list[tuple[str, object]]] = []
        if self.states:
            asked.append([("state", state) for state in self.states])
        for name in ("priority", "category", "model"):
            if (value := getattr(self, name)) is not None:
                asked.append([(name, value)])
        return asked

    def match(self) -> Callable[[TaskSummary], bool]:
        """A row's test, as few calls as possible: a filter that matches nothing reads every row of its narrowest
        list through it (bench/list_tasks.py, "no match")."""
        states = self.states
        names = tuple(name for name in ("priority", "category", "model") if getattr(self, name) is not None)
        if not names:
            return (lambda row: row.state in states) if states else (lambda row: True)
        get = attrgetter(*names)  # one name: the value itself, several: a tuple of them
        wanted = getattr(self, names[0]) if len(names) == 1 else tuple(getattr(self, name) for name in names)
        if states:
            return lambda row: row.state in states and get(row) == wanted
        return lambda row: get(row) == wanted


def encode_cursor(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode("\n".join(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """ValueError for anything this API did not hand out."""
    try:
        submitted_at, task_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("\n")
    except Exception as exc:
        raise ValueError("not a cursor this API handed out") from exc
    return submitted_at, task_id


class TaskIndex:
    def __init__(self) -> None:
        self._rows: dict[str, TaskSummary] = {}
        self._order: list[tuple[str, str]] = []  # every row's key, oldest first
        self._ids: list[str] = []  # every task id, sorted: an id prefix is a range
        # (field, value) -> the keys of the rows that have it, oldest first: a filter reads only its rows.
        self._by: dict[tuple[str, object], list[tuple[str, str]]] = {}
        self.ready = asyncio.Event()  # set once every task stored at start is in
        self.listeners: list[Callable[[TaskSummary | None, TaskSummary], None]] = []  # told (old, new) of each put
        self._following: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    async def start(self, tasks: KeyValue) -> None:
        watcher = await tasks.watchall()
        self._following = asyncio.create_task(self._follow(watcher))

    async def stop(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is None:  # the stored tasks are all in; live writes follow
                    self.ready.set()
                    log.info("task_index_ready", tasks=len(self._rows))
                    continue
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    self.remove(entry.key)
                    continue
                try:
                    self.put(TaskSummary.of(TaskStatus.from_json(entry.value)))
                except ValueError as exc:  # a value this version cannot read: unlisted, not fatal
                    log.warning("task_index_skipped", task_id=entry.key, error=str(exc))
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    def put(self, row: TaskSummary) -> None:
        old = self._rows.get(row.task_id)
        if old is not None:
            self._unlist(old)
        else:
            bisect.insort(self._ids, row.task_id)
        bisect.insort(self._order, row.key)
        for facet in row.facets:
            bisect.insort(self._by.setdefault(facet, []), row.key)
        self._rows[row.task_id] = row
        for listener in self.listeners:
            listener(old, row)

    def remove(self, task_id: str) -> None:
        old = self._rows.pop(task_id, None)
        if old is None:
            return
        self._unlist(old)
        _drop(self._ids, task_id)

    def _unlist(self, row: TaskSummary) -> None:
        _drop(self._order, row.key)
        for facet in row.facets:
            _drop(self._by.get(facet, []), row.key)

    def page(
        self, filters: Filters, limit: int, after: tuple[str, str] | None = None
    ) -> tuple[list[TaskSummary], bool]:
        """Up to `limit` rows matching `filters`, newest first, older than `after`; and whether more follow."""
        match = filters.match()
        found: list[TaskSummary] = []
        for row in self._candidates(filters, after):
            if match(row):
                if len(found) == limit:
                    return found, True
                found.append(row)
        return found, False

    def _candidates(self, filters: Filters, after: tuple[str, str] | None) -> Iterator[TaskSummary]:
        if filters.id_prefix is not None:  # few: sort just those
            start = bisect.bisect_left(self._ids, filters.id_prefix)
            chosen = []
            for task_id in self._ids[start:]:
                if not task_id.startswith(filters.id_prefix):
                    break
                chosen.append(self._rows[task_id])
            found = sorted((r.key for r in chosen if _in_window(r.key, filters, after)), reverse=True)
            yield from (self._rows[key[1]] for key in found)
            return
        high = min(after or _NEWEST, (filters.until, "") if filters.until is not None else _NEWEST)
        low = (filters.since, "") if filters.since is not None else ("", "")
        # The narrowest equality filter decides which keys are read (its rows only); the rest are checked.
        lists = min((self._lists(facets) for facets in filters.facets()), key=_total, default=[self._order])
        descending = [_descending(keys, low, high) for keys in lists]
        newest_first = descending[0] if len(descending) == 1 else heapq.merge(*descending, reverse=True)
        yield from (self._rows[key[1]] for key in newest_first)

    def _lists(self, facets: list[tuple[str, object]]) -> list[list[tuple[str, str]]]:
        return [self._by.get(facet, []) for facet in facets]

    def ended_before(self, cutoff: datetime) -> list[str]:
        """Ids of the tasks that ended before `cutoff` (history past its keeping time)."""
        return [
            row.task_id
            for row in self._rows.values()
            if row.state.terminal and row.completed_at is not None and parse_time(row.completed_at) < cutoff
        ]


_NEWEST = ("\uffff", "")  # after every submission time


def _drop(keys: list, key: object) -> None:
    at = bisect.bisect_left(keys, key)
    if at < len(keys) and keys[at] == key:
        del keys[at]


def _total(lists: list[list[tuple[str, str]]]) -> int:
    return sum(len(keys) for keys in lists)


def _descending(keys: list[tuple[str, str]], low: tuple[str, str], high: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """The keys in [low, high), newest first, without copying the list."""
    for at in range(bisect.bisect_left(keys, high) - 1, bisect.bisect_left(keys, low) - 1, -1):
        yield keys[at]


def _in_window(key: tuple[str, str], filters: Filters, after: tuple[str, str] | None) -> bool:
    return (
        (after is None or key < after)
        and (filters.since is None or key[0] >= filters.since)
        and (filters.until is None or key[0] < filters.until)
    )
