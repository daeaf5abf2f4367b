"""deploy/grafana/task-manager.json: a Grafana dashboard whose every query names a metric the code exports.

The known names come from the registries themselves (the API's, a stage worker's, the upscaler's
collector), so renaming a metric in the code without updating the dashboard fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric

from services.api.metrics import ApiMetrics
from services.upscaler.inference import Stats
from services.upscaler.metrics import UpscalerCollector
from shared.runtime.metrics import WorkerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "task-manager.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


@dataclass
class _Engine:
    device: str = "cpu"
    stats: Stats = field(default_factory=Stats)


def exported_names() -> set[str]:
    """Every series name the code can expose: family names with their type's sample suffixes."""
    families: list[Metric] = [
        *ApiMetrics().registry.collect(),
        *WorkerMetrics("fetcher", "fetcher-1", "0").registry.collect(),
        *UpscalerCollector(_Engine()).describe(),
    ]
    return {family.name + suffix for family in families for suffix in SUFFIXES[family.type]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, grouping clauses and functions left out)."""
    expr = re.sub(r"label_values\(([^,]+),[^)]*\)", r"\1", expr)  # a variable's query: (metric, label)
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return {name for name in re.findall(r"\b([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr) if name not in PROMQL_WORDS}


def panels(dashboard: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_it_is_a_grafana_dashboard_with_a_datasource_variable(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    graphs = [p for p in panels(dashboard) if p["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        pos = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= pos.keys() and pos["x"] + pos["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_metric_in_a_query_is_exported_by_the_code(dashboard: dict[str, Any]) -> None:
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    used = set().union(*(metric_names(e) for e in exprs))
    unknown = used - exported_names()
    assert not unknown, f"the dashboard queries metrics the code does not export: {sorted(unknown)}"
    # The reference metrics and every worker family are on it (a check that the parsing found them).
    for name in ("tasks_submitted_total", "tasks_completed_total", "task_duration_seconds_bucket"):
        assert name in used
    for prefix in ("tm_stage_messages", "tm_stage_duration_seconds", "tm_stage_in_flight", "tm_stage_retries"):
        assert any(name.startswith(prefix) for name in used), prefix
    for name in ("tm_worker_info", "tm_upscaler_gpu_memory_bytes", "tm_upscaler_model_load_seconds"):
        assert name in used
    assert {"tm_upscaler_fp16_fallbacks_total", "tm_upscaler_oom_splits_total"} <= used


def test_the_name_check_catches_a_rename() -> None:
    assert metric_names('sum by (stage) (rate(tm_stage_msgs_total{outcome="succeeded"}[5m]))') == {
        "tm_stage_msgs_total"
    }
    assert "tm_stage_msgs_total" not in exported_names()
