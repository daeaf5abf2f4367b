"""One task's page, /dashboard/tasks/{id}: its stages as a timeline (queue wait, duration, attempts,
worker, error), its settings and outcome, and previews of the input and output images; and the task
search, /dashboard/tasks?state=&id_prefix= (the API's in-memory task index, as GET /api/v1/tasks).

Rendered on the server only (a task's page is a snapshot: reload it to see it move); every stored
value is escaped, and only http(s) URLs become links or previews (never s3://, file:// or javascript:).
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote, urlsplit

from services.api.dashboard.assets import STYLE, TASK_PAGE
from services.api.tasks.index import TaskSummary
from shared.queues import format_age
from shared.taskstate.status import Subtask, TaskState, TaskStatus, parse_time

SEARCH_LIMIT = 50


def _between(since: str | None, until: str | None) -> float | None:
    if not since or not until:
        return None
    try:
        return max(0.0, (parse_time(until) - parse_time(since)).total_seconds())
    except ValueError:
        return None


def _web(url: str | None) -> bool:
    return bool(url) and urlsplit(str(url)).scheme.lower() in ("http", "https")


def _url(url: str | None) -> str:
    """A URL as text, a link when a browser may follow it."""
    if not url:
        return "-"
    text = escape(url)
    return f"<a href='{text}' rel='noreferrer noopener'>{text}</a>" if _web(url) else f"<code>{text}</code>"


def _time(value: str | None) -> str:
    return f"<span title='{escape(value)}'>{escape(value[11:23])}</span>" if value else "-"


def _state(state: str) -> str:
    return f"<span class='state s-{escape(state)}'>{escape(state)}</span>"


def _row(entry: Subtask) -> str:
    cells = (
        f"<b>{escape(entry.name.value)}</b>",
        _state(entry.state.value),
        str(entry.attempts),
        escape(entry.worker_id or "-"),
        _time(entry.queued_at),
        _time(entry.started_at),
        _time(entry.completed_at),
        format_age(_between(entry.queued_at, entry.started_at)),
        format_age(_between(entry.started_at, entry.completed_at)),
        f"<span class='error'>{escape(entry.error)}</span>" if entry.error else "",
    )
    return f"<tr class='stage' data-stage='{escape(entry.name.value)}'>" + "".join(f"<td>{c}</td>" for c in cells)


STAGE_HEADINGS = ("Stage", "State", "Attempts", "Worker", "Queued", "Started", "Completed", "Waited", "Took", "Error")


def _timeline(status: TaskStatus) -> str:
    if not status.subtasks:
        return "<p class='empty'>No stage has been recorded.</p>"
    head = "".join(f"<th>{h}</th>" for h in STAGE_HEADINGS)
    body = "</tr>".join(_row(entry) for entry in status.subtasks) + "</tr>"
    return f"<table id='timeline'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _preview(title: str, url: str | None) -> str:
    if not _web(url):
        return ""
    text = escape(str(url))
    return (
        f"<figure><a href='{text}' rel='noreferrer noopener'><img src='{text}' alt='{escape(title)} image' "
        f"loading='lazy' referrerpolicy='no-referrer'></a><figcaption>{escape(title)}</figcaption></figure>"
    )


def _facts(status: TaskStatus) -> list[tuple[str, str]]:
    result: dict[str, Any] = status.result or {}
    classification = status.classification
    took = _between(status.submitted_at, status.completed_at)
    return [
        ("State", _state(status.state.value)),
        ("Progress", f"{int(status.progress * 100 + 0.5)}%"),
        ("Run", str(status.run)),
        ("Priority", str(status.priority)),
        (
            "Classification",
            escape(f"{classification.category.value} ({classification.width}x{classification.height})")
            if classification
            else "-",
        ),
        ("Model", escape(str(result.get("model") or "-"))),
        ("Ran on", escape(status.worker_type or "-")),
        ("Submitted", _time(status.submitted_at)),
        ("Completed", _time(status.completed_at)),
        ("Took", format_age(took)),
        ("Input", _url(status.input_url)),
        ("Output", _url(status.output_url)),
        ("Error", f"<span class='error'>{escape(status.error)}</span>" if status.error else "-"),
    ]


RETRYABLE = frozenset({TaskState.FAILURE, TaskState.TIMEOUT, TaskState.REVOKED})  # as POST .../retry takes


def _buttons(status: TaskStatus, csrf: str) -> str:
    """Revoke while it runs, Retry once it failed, timed out or was revoked (services/api/dashboard/actions.py)."""
    action = "revoke" if not status.state.terminal else "retry" if status.state in RETRYABLE else ""
    if not action:
        return ""
    href = escape(f"{task_href(status.task_id)}/{action}")
    return (
        f"<form class='action' method='post' action='{href}'><input type='hidden' name='csrf' value='{escape(csrf)}'>"
        f"<button type='submit' id='{action}'>{action.capitalize()}</button></form>"
    )


def render_task_page(status: TaskStatus, csrf: str | None = None) -> str:
    """The whole page for one task's stored status; with `csrf`, its Revoke or Retry button."""
    facts = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in _facts(status))
    previews = _preview("Input", status.input_url) + _preview("Output", status.output_url)
    body = (
        f"<h2>Task <code>{escape(status.task_id)}</code></h2>"
        + (_buttons(status, csrf) if csrf is not None else "")
        + f"<dl id='facts'>{facts}</dl>"
        f"<h2>Stages</h2><section id='stages'>{_timeline(status)}</section>"
        + (f"<h2>Images</h2><section id='previews'>{previews}</section>" if previews else "")
    )
    return fill(f"task {status.task_id}", body)


def render_missing_task(task_id: str) -> str:
    """The 404 page for an id that names no stored task."""
    return fill("unknown task", f"<h2>No task <code>{escape(task_id)}</code></h2><p>It was never submitted, "
                 "or it was deleted. <a href='/dashboard'>Back to the dashboard</a>.</p>")  # fmt: skip


def search_form(state: str = "", id_prefix: str = "") -> str:
    """The search form (GET, so a search is a link too), shown on /dashboard and above the results."""
    options = "".join(
        f"<option value='{s.value}'{' selected' if s.value == state else ''}>{s.value}</option>" for s in TaskState
    )
    return (
        "<form id='search' method='get' action='/dashboard/tasks'>"
        f"<label>State <select name='state'><option value=''>any</option>{options}</select></label>"
        f"<label>Id starts with <input name='id_prefix' value='{escape(id_prefix)}' maxlength='36' "
        "pattern='[0-9a-fA-F-]*' placeholder='0b5c3c1e'></label><button type='submit'>Find tasks</button></form>"
    )


SEARCH_HEADINGS = ("Task", "State", "Priority", "Category", "Model", "Submitted", "Error")


def render_search(state: str, id_prefix: str, rows: list[TaskSummary] | None, more: bool, problem: str) -> str:
    """The search results page: the form again, then the matching tasks (`rows` None: no search ran)."""
    if problem:
        results = f"<p class='error'>{escape(problem)}</p>"
    elif not rows:
        results = "<p class='empty'>No task matches.</p>"
    else:
        head = "".join(f"<th>{h}</th>" for h in SEARCH_HEADINGS)
        body = "".join(
            f"<tr><td><a href='{escape(task_href(r.task_id))}'><code>{escape(r.task_id)}</code></a></td>"
            f"<td>{_state(r.state.value)}</td><td>{r.priority}</td><td>{escape(r.category or '')}</td>"
            f"<td>{escape(r.model or '')}</td><td>{_time(r.submitted_at)}</td>"
            f"<td><span class='error'>{escape(r.error or '')}</span></td></tr>"
            for r in rows
        )
        note = f"<p class='empty'>The newest {len(rows)} shown; narrow the search for older ones.</p>" if more else ""
        results = f"<table id='results'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"
    return fill("task search", f"<h2>Find tasks</h2>{search_form(state, id_prefix)}<section>{results}</section>")


def task_href(task_id: str) -> str:
    return "/dashboard/tasks/" + quote(task_id, safe="")


def fill(title: str, body: str) -> str:
    """The task pages' shell around `body` (HTML already escaped)."""
    page = TASK_PAGE
    for name, value in (("style", STYLE), ("title", escape(title)), ("body", body)):
        page = page.replace(f"<!--{name}-->", value)
    return page
