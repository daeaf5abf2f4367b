"""The server-side render of the dashboard page: sections, cell formats, escaping."""

from __future__ import annotations

import json
import re

from services.api.dashboard.page import SECTIONS, cell, render_page, render_section

HOSTILE = "<script>alert(1)</script>"


def data(**extra: object) -> dict:
    return {
        "generated_at": "2026-01-02T03:04:05.678Z",
        "version": "0.1.0",
        "summary": {"workers": 1, "waiting": 3, "in_progress": 1, "oldest_waiting_s": 75.0},
        "workers": [
            {"service": "fetcher", "worker_id": "fetcher-h-1", "pid": 1, "uptime_s": 3700, "heartbeat_age_s": 0.4,
             "in_flight": ["0123456789abcdef"], "counters": {"succeeded": 3, "failed": 0, "handed_back": 1},
             "metrics_url": "http://h:9100/metrics"},
        ],
        "gpus": [{"worker_id": "upscaler-h-2", "precision": "fp16", "memory_used_mb": 512, "memory_total_mb": 8192}],
        "queues": {
            "stages": [{"stage": "fetch", "pending": 3, "ack_pending": 1, "redelivered": 0, "oldest_waiting_s": 75}],
            "consumers": [
                {"stream": "TM_WORK_P9", "stage": "fetch", "pending": 3, "ack_pending": 1, "redelivered": 0},
                {"stream": "TM_WORK_P8", "stage": "upload", "pending": 0, "ack_pending": 0, "redelivered": 0},
            ],
            "streams": [{"stream": "TM_WORK_P9", "priority": 9, "messages": 4, "size_bytes": 3072}],
        },
        "tasks": [{"task_id": "t-1", "state": "FAILURE", "progress": 0.155, "error": HOSTILE}],
        "endpoints": [{"methods": "GET", "path": "/api/v1/tasks/{task_id}", "summary": "Get"}],
        **extra,
    }  # fmt: skip


def test_every_section_is_rendered_with_its_rows() -> None:
    page = render_page(data(), "/dashboard/data")
    for section in SECTIONS:
        assert f"id='{section.id}'" in page
    for text in ("Worker pool", "GPU configuration", "Queues", "Recent tasks", "API endpoints"):
        assert text in page
    assert "<td>fetcher</td>" in page and "<td>fp16</td>" in page
    assert "1h01m" in page and "400ms ago" in page  # uptime, heartbeat age
    assert "<code title='0123456789abcdef'>01234567</code>" in page
    assert "3 succeeded, 1 handed back" in page
    assert "512 / 8192 MB" in page and "3.0 KiB" in page
    assert "TM_WORK_P9" in page and "TM_WORK_P8" not in page  # only consumers with work
    assert "<span class='state s-FAILURE'>FAILURE</span>" in page and "16%" in page
    assert "<b>1m15s</b>" in page  # the oldest waiting card
    assert "Updated 03:04:05 UTC" in page


def test_data_is_escaped_and_cannot_end_the_script() -> None:
    page = render_page(data(), "/dashboard/data")
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    spec = re.search(r'<script id="dashboard-spec" type="application/json">(.*?)</script>', page, re.S)
    assert spec is not None
    assert json.loads(spec.group(1))["url"] == "/dashboard/data"
    assert page.count("</script>") == 2


def test_empty_sections_say_so() -> None:
    empty = data(workers=[], gpus=[], tasks=[], queues={"stages": [], "consumers": [], "streams": []})
    page = render_page(empty, "/dashboard/data")
    for text in ("No workers are running.", "No upscaler is running.", "All stage queues are empty.", "No tasks yet."):
        assert text in page


def test_cells() -> None:
    assert cell("text", None, {}) == "" and cell("ids", [], {}) == "-"
    assert cell("counters", {"succeeded": 0}, {}) == "0"
    assert (
        cell("link", "http://h/m?a=1&b='", {})
        == "<a href='http://h/m?a=1&amp;b=&#x27;'>http://h/m?a=1&amp;b=&#x27;</a>"
    )
    assert cell("time", "2026-01-02T03:04:05Z", {}) == "<span title='2026-01-02T03:04:05Z'>03:04:05</span>"
    section = next(s for s in SECTIONS if s.id == "summary")
    assert render_section(section, {"summary": {}}).count("<b>-</b>") == len(section.columns)
