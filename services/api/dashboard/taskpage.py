"""One task's page, /dashboard/tasks/{id}: its stages as a timeline (queue wait, duration, attempts,
worker, error), its settings and outcome, and previews of the input and output images; and the task
search, /dashboard/tasks, with GET /api/v1/tasks's filters, names and rules (services/api/tasks/listing.py)
a page at a time.

Rendered on the server only (a task's page is a snapshot: reload it to see it move); every stored
value is escaped, and only http(s) URLs become links or previews (never s3://, file:// or javascript:).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from services.api.dashboard.assets import STYLE, TASK_PAGE
from services.api.tasks.listing import MAX_LIMIT, QueryError, TaskList, TaskQuery
from shared.contracts.catalog import MODELS
from shared.messages import PRIORITIES, Category
from shared.queues import format_age
from shared.taskstate.status import Subtask, TaskState, TaskStatus, format_time, parse_time


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


WITHIN = {  # the presets of the form's `within`: value -> (label, how far back)
    "15m": ("the last 15 min", timedelta(minutes=15)),
    "1h": ("the last hour", timedelta(hours=1)),
    "24h": ("the last 24 h", timedelta(hours=24)),
}


def search_query(fields: Iterable[tuple[str, str]], now: datetime) -> list[tuple[str, str]]:
    """The search form's fields as GET /api/v1/tasks's query: a field left blank filters nothing, an id prefix
    is read in lower case, and `within`, a preset relative to `now` (which the query cannot name), becomes
    `submitted_since`. QueryError for a preset that is none."""
    pairs = [(name, value.lower() if name == "id_prefix" else value) for name, v in fields if (value := v.strip())]
    within = dict(pairs).get("within")
    if within is None:
        return pairs
    if within not in WITHIN:
        raise QueryError(f"query.within: not one of {', '.join(WITHIN)}")
    since = format_time(now - WITHIN[within][1])
    return [(name, value) for name, value in pairs if name not in ("within", "submitted_since")] + [
        ("submitted_since", since)
    ]


def search_href(query: Iterable[tuple[str, str]], cursor: str | None = None) -> str:
    """The search as a link: the query's filters and limit, and `cursor` (the page; none: the first)."""
    kept = [(name, value) for name, value in query if name in TaskQuery.model_fields and name != "cursor"]
    return "/dashboard/tasks?" + urlencode(kept + ([("cursor", cursor)] if cursor else []))


def _select(name: str, options: list[tuple[str, str]], chosen: str, blank: str = "any") -> str:
    if chosen and chosen not in dict(options):  # a value refused: shown as asked
        options = [*options, (chosen, chosen)]
    items = "".join(
        f"<option value='{escape(value)}'{' selected' if value == chosen else ''}>{escape(label)}</option>"
        for value, label in [("", blank), *options]
    )
    return f"<select name='{name}'>{items}</select>"


PAGE = TaskQuery.model_fields["limit"].default
TIME_INPUT = "placeholder='2026-12-07T10:00:00Z' size='24'"
INPUTS = {  # the text fields' attributes
    "model": "list='models' placeholder='any'",
    "submitted_since": TIME_INPUT,
    "submitted_until": TIME_INPUT,
    "id_prefix": "maxlength='36' pattern='[0-9a-fA-F-]*' placeholder='0b5c3c1e' size='10'",
    "limit": f"type='number' min='1' max='{MAX_LIMIT}'",
}


def search_form(fields: Iterable[tuple[str, str]] = ()) -> str:
    """The search form (GET, so a search is a link too) filled in with `fields`, on /dashboard (empty) and
    above the results: GET /api/v1/tasks's filters under their names, and `within`, a preset."""
    states: set[str] = set()
    last = {"limit": str(PAGE)}  # of every other field, the last value sent (as the query reads it)
    for name, value in fields:
        if name == "state":
            states.add(value)
        else:
            last[name] = value
    boxes = "".join(
        f"<label><input type='checkbox' name='state' value='{s.value}'{' checked' if s.value in states else ''}>"
        f"{s.value}</label>"
        for s in TaskState
    )
    text = {
        name: f"<input name='{name}' value='{escape(last.get(name, ''))}' {attrs}>" for name, attrs in INPUTS.items()
    }
    models = "".join(f"<option value='{escape(name)}'>" for name, spec in MODELS.items() if spec.selectable)
    presets = [(value, label) for value, (label, _) in WITHIN.items()]
    labelled = (
        ("Priority", _select("priority", [(str(p), str(p)) for p in PRIORITIES], last.get("priority", ""))),
        ("Category", _select("category", [(c.value, c.value) for c in Category], last.get("category", ""))),
        ("Model", text["model"] + f"<datalist id='models'>{models}</datalist>"),
        ("Submitted in", _select("within", presets, last.get("within", ""), "any time")),
        ("or since", text["submitted_since"]),
        ("until", text["submitted_until"]),
        ("Id starts with", text["id_prefix"]),
        ("Per page", text["limit"]),
    )
    return (
        "<form id='search' method='get' action='/dashboard/tasks'>"
        f"<fieldset><legend>State</legend>{boxes}</fieldset>"
        + "".join(f"<label>{label} {control}</label>" for label, control in labelled)
        + "<button type='submit'>Find tasks</button></form>"
    )


SEARCH_HEADINGS = ("Task", "State", "Priority", "Category", "Model", "Submitted", "Error")


def _results(query: list[tuple[str, str]], found: TaskList) -> str:
    if not found.tasks:
        return "<p class='empty'>No task matches.</p>"
    head = "".join(f"<th>{h}</th>" for h in SEARCH_HEADINGS)
    body = "".join(
        f"<tr><td><a href='{escape(task_href(r.task_id))}'><code>{escape(r.task_id)}</code></a></td>"
        f"<td>{_state(r.state.value)}</td><td>{r.priority}</td><td>{escape(r.category or '')}</td>"
        f"<td>{escape(r.model or '')}</td><td>{_time(r.submitted_at)}</td>"
        f"<td><span class='error'>{escape(r.error or '')}</span></td></tr>"
        for r in found.tasks
    )
    links = []
    if any(name == "cursor" for name, _ in query):
        links.append(f"<a id='first' href='{escape(search_href(query))}'>First page</a>")
    if found.next_cursor:
        links.append(f"<a id='next' rel='next' href='{escape(search_href(query, found.next_cursor))}'>Next page</a>")
    pages = f"<p id='pages'>{' | '.join(links)}</p>" if links else ""
    return f"<table id='results'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{pages}"


def render_search(
    fields: list[tuple[str, str]], query: list[tuple[str, str]], found: TaskList | None, problem: str = ""
) -> str:
    """The search page: the form with `fields` as sent, then a page of what `query` found, newest first, with
    links to the next (older) page and back to the first; or `problem`, why the search did not run."""
    results = f"<p class='error'>{escape(problem)}</p>" if problem or found is None else _results(query, found)
    return fill("task search", f"<h2>Find tasks</h2>{search_form(fields)}<section>{results}</section>")


def task_href(task_id: str) -> str:
    return "/dashboard/tasks/" + quote(task_id, safe="")


def fill(title: str, body: str) -> str:
    """The task pages' shell around `body` (HTML already escaped)."""
    page = TASK_PAGE
    for name, value in (("style", STYLE), ("title", escape(title)), ("body", body)):
        page = page.replace(f"<!--{name}-->", value)
    return page
