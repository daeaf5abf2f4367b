"""The /dashboard page: rendered on the server first (it works without JavaScript), then kept fresh
by a small inline script that fetches /dashboard/data every REFRESH_MS and re-renders each section
in place, without reloading the page.

Both renderers follow the same section specs (embedded in the page as JSON), so a column is added
once, here; the cell formats are the only thing written twice (`cell` below, `cell` in SCRIPT).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from html import escape
from typing import Any

from services.api.dashboard.assets import PAGE, SCRIPT, STYLE
from services.api.dashboard.charts import CHART_REFRESH_MS
from services.api.dashboard.taskpage import search_form, task_href
from shared.queues import format_age

REFRESH_MS = 2000
Column = tuple[str, str, str]  # (field, heading, format)


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    rows: str  # dotted path into the /dashboard/data document
    columns: tuple[Column, ...]
    empty: str
    busy_only: bool = False  # leave out rows with nothing pending, held or redelivered
    cards: bool = False  # one object shown as figures instead of a table


QUEUE_COUNTS: tuple[Column, ...] = (
    ("pending", "Waiting", "text"),
    ("ack_pending", "In progress", "text"),
    ("redelivered", "Redelivered", "text"),
    ("oldest_waiting_s", "Oldest waiting", "age"),
)
SECTIONS = (
    Section(
        "summary", "", "summary",
        (("workers", "Workers", "text"), ("waiting", "Waiting", "text"), ("in_progress", "In progress", "text"),
         ("oldest_waiting_s", "Oldest waiting", "age")),
        "", cards=True,
    ),
    Section(
        "workers", "Worker pool", "workers",
        (("service", "Service", "text"), ("worker_id", "Worker", "text"), ("host", "Host", "text"),
         ("pid", "PID", "text"), ("version", "Version", "text"), ("uptime_s", "Uptime", "age"),
         ("heartbeat_age_s", "Heartbeat", "ago"), ("concurrency", "Slots", "text"),
         ("in_flight", "In flight", "ids"), ("counters", "Done", "counters"), ("metrics_url", "Metrics", "link")),
        "No workers are running.",
    ),
    Section(
        "gpus", "GPU configuration", "gpus",
        (("worker_id", "Upscaler", "text"), ("device", "Device", "text"), ("device_name", "Name", "text"),
         ("memory_used_mb", "Memory used / total", "memory"), ("precision", "Precision", "text"),
         ("tile", "Tile", "text"), ("models_loaded", "Loaded models", "text"), ("downloading", "Downloading", "text"),
         ("fp16_fallbacks", "fp16 fallbacks", "text"), ("oom_splits", "OOM splits", "text"),
         ("shared_batches", "Shared batches", "text")),
        "No upscaler is running.",
    ),
    Section("stages", "By stage", "queues.stages", (("stage", "Stage", "text"), *QUEUE_COUNTS), "No queues declared."),
    Section(
        "consumers", "Stage consumers with work", "queues.consumers",
        (("stream", "Stream", "text"), ("stage", "Stage", "text"), *QUEUE_COUNTS),
        "All stage queues are empty.", busy_only=True,
    ),
    Section(
        "streams", "Priority streams", "queues.streams",
        (("stream", "Stream", "text"), ("messages", "Messages", "text"),
         ("size_bytes", "Size", "bytes"), ("oldest_message_s", "Oldest message", "age")),
        "No work streams declared.",
    ),
    Section(
        "tasks", "Recent tasks", "tasks",
        (("task_id", "Task", "task"), ("state", "State", "state"), ("stage", "Stage", "text"),
         ("progress", "Progress", "progress"), ("priority", "Priority", "text"), ("submitted_at", "Submitted", "time"),
         ("duration_s", "Took", "age"), ("error", "Error", "text")),
        "No tasks yet.",
    ),
    Section(
        "endpoints", "API endpoints", "endpoints",
        (("methods", "Methods", "text"), ("path", "Path", "code"), ("summary", "Summary", "text")), "",
    ),
)  # fmt: skip


def _size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def cell(fmt: str, value: Any, row: dict[str, Any]) -> str:
    """One table cell's HTML (the script's `cell` does the same in the browser)."""
    if value is None or value == "" or value == [] or value == {}:
        return "" if fmt != "ids" else "-"
    text = escape(str(value))
    if fmt == "code":
        return f"<code>{text}</code>"
    if fmt == "task":  # a link to the task's own page
        return f"<a href='{escape(task_href(str(value)))}'><code>{text}</code></a>"
    if fmt in ("age", "ago"):
        return format_age(value) + (" ago" if fmt == "ago" else "")
    if fmt == "ids":
        return " ".join(f"<code title='{escape(v)}'>{escape(v[:8])}</code>" for v in value)
    if fmt == "counters":
        return escape(", ".join(f"{n} {k.replace('_', ' ')}" for k, n in value.items() if n)) or "0"
    if fmt == "link":
        return f"<a href='{text}'>{text}</a>"
    if fmt == "state":
        return f"<span class='state s-{text}'>{text}</span>"
    if fmt == "progress":
        percent = int(float(value) * 100 + 0.5)  # as the script's Math.round
        return f"<span class='bar'><i style='width:{percent}%'></i></span> {percent}%"
    if fmt == "memory":
        return f"{value} / {row.get('memory_total_mb', '?')} MB"
    if fmt == "bytes":
        return _size(float(value))
    if fmt == "time":
        return f"<span title='{text}'>{escape(str(value)[11:19])}</span>"
    return text


def _busy(row: dict[str, Any]) -> bool:
    return bool(row.get("pending") or row.get("ack_pending") or row.get("redelivered"))


def render_section(section: Section, data: dict[str, Any]) -> str:
    found: Any = data
    for part in section.rows.split("."):
        found = found.get(part) if isinstance(found, dict) else None
    if section.cards:
        return "".join(
            f"<div class='card'><b>{cell(fmt, (found or {}).get(key), found or {}) or '-'}</b>"
            f"<span>{escape(title)}</span></div>"
            for key, title, fmt in section.columns
        )
    rows = [r for r in found or [] if _busy(r)] if section.busy_only else list(found or [])
    if not rows:
        return f"<p class='empty'>{escape(section.empty)}</p>"
    head = "".join(f"<th>{escape(title)}</th>" for _, title, _ in section.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(fmt, row.get(key), row)}</td>" for key, _, fmt in section.columns) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


QUEUE_SECTIONS = ("stages", "consumers", "streams")  # shown side by side under one "Queues" heading


SIGN_OUT = "<form method='post' action='/dashboard/signout'><button type='submit'>Sign out</button></form>"


def render_page(data: dict[str, Any], data_url: str, charts: str = "", signed_in: bool = False) -> str:
    """The whole page for one /dashboard/data document and the charts' HTML (with a sign-out button for a
    browser session); the charts are fetched again from beside `data_url`."""
    fills = {
        "signout": SIGN_OUT if signed_in else "",
        "search": search_form(),
        "style": STYLE,
        "script": SCRIPT,
        "version": escape(str(data.get("version", ""))),
        "time": escape(str(data.get("generated_at", ""))[11:19]),
        "refresh_s": str(REFRESH_MS / 1000),
        # "</" cannot end the script element early once escaped
        "charts": charts,
        "spec": json.dumps(
            {
                "url": data_url,
                "refresh_ms": REFRESH_MS,
                "charts_url": data_url.rsplit("/", 1)[0] + "/charts",
                "charts_refresh_ms": CHART_REFRESH_MS,
                "sections": [asdict(s) for s in SECTIONS],
            }
        ).replace("</", "<\\/"),
    }
    for section in SECTIONS:
        heading = "h3" if section.id in QUEUE_SECTIONS else "h2"
        title = f"<{heading}>{escape(section.title)}</{heading}>" if section.title else ""
        fills[section.id] = (
            f"<section id='{section.id}'>{title}<div class='body'>{render_section(section, data)}</div></section>"
        )
    page = PAGE
    for name, value in fills.items():
        page = page.replace(f"<!--{name}-->", value)
    return page
