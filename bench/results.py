"""What one benchmark run measured, and the tables it is printed as (see bench/README.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROLES = ("api", "fetcher", "classifier", "upscaler", "uploader", "nats-server", "sink", "load generator")
OTHERS = "others on this machine"  # every other process: another benchmark or test run skews the figures


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class RunConfig:
    label: str
    tasks: int
    rate: float  # tasks/s offered; 0: as fast as the API answers (MAX_INFLIGHT_POSTS at a time)
    procs_per_stage: int = 1
    concurrency: int | None = None  # TM_CONCURRENCY; None: the services' default
    stage_procs: dict[str, int] = field(default_factory=dict)  # e.g. {"classifier": 3}: overrides procs_per_stage
    image_px: int = 16
    input: str = "http"  # http: GET from the sink; file: file:// path
    output: str = "file"  # file: file:// into the temp dir; http: PUT to the sink
    warmup: int = 50
    timeout_s: float = 150.0
    profile_dir: Path | None = None
    whatif: tuple[str, ...] = ()  # bench/whatif patches applied to the services
    site: str | None = None  # extra packages for the services (uvloop, httptools)
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the services
    keep: bool = False  # keep the temp dir (logs, JetStream store) for a look afterwards


@dataclass
class ProcessRow:
    role: str
    processes: int
    cpu_percent: float  # of one core, summed over the role's processes, over the measured window
    cpu_ms_per_task: float
    nats_in_per_task: float | None  # messages the role's connections published, per task
    nats_out_per_task: float | None  # messages delivered to them, per task


@dataclass
class RunResult:
    config: RunConfig
    submitted: int = 0
    http_errors: dict[str, int] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # error of non-SUCCESS tasks -> count
    missing: int = 0
    wall_s: float = 0.0
    submit_s: float = 0.0
    schedule_lag_max_ms: float = 0.0
    tasks_per_s: float = 0.0
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # client: POST sent -> event heard
    server_latency_ms: dict[str, float | None] = field(default_factory=dict)  # completed_at - submitted_at
    api_ms: dict[str, float | None] = field(default_factory=dict)  # POST round trip
    # Where a task's time goes, from its status's per-stage times: "wait fetch" (queued after the
    # previous step), "fetch" (in the stage), ... -> {"p50": ..., "p99": ...}
    segments_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    processes: list[ProcessRow] = field(default_factory=list)
    profiles: dict[str, dict] = field(default_factory=dict)

    @property
    def non_success(self) -> int:
        return sum(n for state, n in self.states.items() if state != "SUCCESS")


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def summary_table(results: list[RunResult]) -> str:
    headers = ["run", "procs", "conc", "img", "offered/s", "tasks", "e2e tasks/s"]
    headers += ["lat p50 ms", "p95", "p99", "srv p50", "srv p99", "API p50 ms", "API p99", "non-OK", "missing"]
    headers += ["others CPU%"]
    rows = []
    for r in results:
        c = r.config
        failures = r.non_success + sum(r.http_errors.values())
        rows.append(
            [
                c.label,
                str(c.procs_per_stage),
                str(c.concurrency or 4),
                f"{c.image_px}px",
                _fmt(c.rate) if c.rate else "max",
                str(r.submitted),
                _fmt(r.tasks_per_s, 1),
                _fmt(r.latency_ms.get("p50")),
                _fmt(r.latency_ms.get("p95")),
                _fmt(r.latency_ms.get("p99")),
                _fmt(r.server_latency_ms.get("p50")),
                _fmt(r.server_latency_ms.get("p99")),
                _fmt(r.api_ms.get("p50"), 1),
                _fmt(r.api_ms.get("p99"), 1),
                str(failures),
                str(r.missing),
                _fmt(next((p.cpu_percent for p in r.processes if p.role == OTHERS), None)),
            ]
        )
    return table(headers, rows)


def process_table(result: RunResult) -> str:
    headers = ["process", "n", "CPU % (1 core)", "CPU ms/task", "NATS pub/task", "NATS recv/task"]
    rows = [
        [p.role, str(p.processes), _fmt(p.cpu_percent), _fmt(p.cpu_ms_per_task, 2)]
        + [_fmt(p.nats_in_per_task, 1), _fmt(p.nats_out_per_task, 1)]
        for p in result.processes
    ]
    system = [p for p in result.processes if p.role not in ("load generator", OTHERS)]
    percent, ms = sum(p.cpu_percent for p in system), sum(p.cpu_ms_per_task for p in system)
    rows.insert(len(system), ["system under test", "", _fmt(percent), _fmt(ms, 2), "", ""])
    return table(headers, rows)


def profile_report(result: RunResult, top: int = 8) -> str:
    parts = []
    for name, prof in result.profiles.items():
        if not prof["samples"]:
            continue
        ms = prof.get("cpu_ms_per_task") or 0.0
        parts.append(
            f"\n== {name}: {ms:.2f} CPU ms/task; {prof['samples']} samples on CPU, {prof['waiting']} waiting for one"
        )
        for title, key in (
            ("by component (leaf frame)", "components"),
            ("inclusive (anywhere on the stack)", "inclusive"),
        ):
            parts.append(f"  {title}:  " + ", ".join(f"{n} {s:.0%}" for n, s in prof[key][:top]))
        parts.append("  top leaf functions:")
        parts += [f"    {s:5.1%}  {n}" for n, s in prof["leaves"][:top]]
        parts.append("  project functions (inclusive):")
        parts += [f"    {s:5.1%}  {n}" for n, s in prof["project"][:top]]
    return "\n".join(parts)


STAGES = ("fetch", "classify", "upscale", "upload")


def segments(status: dict) -> dict[str, float]:
    """Milliseconds per step of one finished task: queue wait before each stage, then the stage.

    A stage publishes the next message before it records its own end, so the next stage may start
    a moment before that end: a wait is never below zero."""
    times = {entry["name"]: entry for entry in status.get("subtasks", [])}
    steps: dict[str, float] = {}
    previous = status["submitted_at"]
    for stage in STAGES:
        entry = times.get(stage) or {}
        started, ended = entry.get("started_at"), entry.get("completed_at")
        if not started or not ended:
            return {}
        steps[f"wait {stage}"] = max((iso_s(started) - iso_s(previous)) * 1000, 0.0)
        steps[stage] = (iso_s(ended) - iso_s(started)) * 1000
        previous = ended
    return steps


def iso_s(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def segments_table(result: RunResult) -> str:
    headers = ["step (ms)", "p50", "p95", "p99", "max"]
    rows = [
        [name] + [_fmt(q.get(k), 1) for k in ("p50", "p95", "p99", "max")] for name, q in result.segments_ms.items()
    ]
    return table(headers, rows) if rows else ""


def report(result: RunResult) -> str:
    r = result
    lines = [
        f"\n### {r.config.label}: {r.submitted} tasks in {r.wall_s:.1f}s "
        f"(submitting took {r.submit_s:.1f}s, schedule lag max {r.schedule_lag_max_ms:.0f} ms)",
        f"states: {r.states or '{}'}  HTTP errors: {r.http_errors or 'none'}  missing: {r.missing}",
        *(f"  {n} x {error}" for error, n in sorted(r.errors.items(), key=lambda item: -item[1])[:5]),
        process_table(r),
        segments_table(r),
    ]
    if r.profiles:
        lines.append(profile_report(r))
    return "\n".join(lines)
