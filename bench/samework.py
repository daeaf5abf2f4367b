"""Same work, two stacks: task-manager against Celery on one machine, in one command (issue #11).

    python bench/samework.py                         # task-manager, then Celery: a burst of 500, then 5/s x 150
    python bench/samework.py --first celery --json /tmp/samework.json
    python bench/samework.py --only celery --tasks 100 --paced-tasks 30
    python bench/samework.py --tracing                # task-manager with tracing off, then on (OTLP to a sink)

Both stacks fetch the same four photos over HTTP, classify them, upscale them 4x with Lanczos (no weights
installed) and write a PNG to a local S3 (bench/workload.py); the stacks are bench/tm_stack.py and
bench/celery_stack.py. Each stack is started, warmed up (`--warmup` tasks, not counted), sent a burst
(`--tasks`, all at once) and a paced run (`--paced-tasks` at `--paced-rate` a second), then stopped, before
the other starts. Per run it prints tasks/s (completions / first submit -> last completion), CPU ms per task
of every process of the stack (utime + stime from /proc, children included), the shared infrastructure and
the client apart, latency percentiles (submit -> completion seen by the client) and the S3 check; at the
end, the tables and the ratios task-manager / Celery. bench/README.md ("Same work with Celery") explains them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/samework.py`: make bench/, shared/, services/, tests/ importable
    sys.path.insert(0, str(ROOT))

from bench import workload  # noqa: E402
from bench.celery_stack import CeleryStack  # noqa: E402
from bench.harness import machine_busy_seconds  # noqa: E402
from bench.load import wait_for_quiet  # noqa: E402
from bench.results import percentile  # noqa: E402
from bench.tm_stack import TaskManagerStack  # noqa: E402
from bench.workload import Infra, Outcome, start_infra  # noqa: E402

TRACED = "task-manager+otel"  # task-manager exporting every span over OTLP/HTTP to a sink in this process
STACKS = ("task-manager", "celery", TRACED)
SETTLE_S = 1.0  # CPU is read this long after the last completion: the last tasks' clean-up is counted
PAUSE_S = 3.0  # between a stack's runs, so one run's tail is not the next one's cost
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CLIENT = "client (this process)"
OTHERS = "others on the machine"


# -- CPU -----------------------------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds: utime + stime, plus cutime + cstime of the children it has reaped)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # After the ")": state ppid ... utime(12) stime(13) cutime(14) cstime(15), numbering from state = 1.
        table[int(entry.name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / _CLOCK_TICKS)
    return table


def tree_cpu(roots: dict[str, int]) -> dict[str, tuple[int, float]]:
    """CPU seconds so far of each named process and, as "<name> children", of all processes below it.

    A child's time moves into its parent's cutime when the parent reaps it, so every CPU second is counted
    once whether the process that spent it is still alive or not (a pool process replaced mid-run)."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    totals: dict[str, tuple[int, float]] = {}
    for name, root in roots.items():
        if root in table:
            totals[name] = (1, table[root][1])
        below = list(children.get(root, []))
        count, cpu = 0, 0.0
        while below:
            pid = below.pop()
            count, cpu = count + 1, cpu + table[pid][1]
            below.extend(children.get(pid, []))
        if count:
            totals[f"{name} children"] = (count, cpu)
    return totals


def own_cpu() -> float:
    """This process's CPU seconds, all threads, without its children (the stacks are its children)."""
    times = os.times()
    return times.user + times.system


# -- one run ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    stack: str
    shape: str  # burst | paced
    tasks: int
    rate: float | None  # None: all at once
    ok: int = 0
    failed: int = 0  # every other task: an end other than success, an error, or no end seen before the deadline
    resumed: int = 0  # event streams opened again after a break (task-manager's client)
    wall_s: float = 0.0
    tasks_per_s: float = 0.0
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    cpu_ms_per_task: dict[str, float] = field(default_factory=dict)  # the stack's processes
    procs: dict[str, int] = field(default_factory=dict)
    stack_cpu_ms_per_task: float = 0.0
    outside_cpu_ms_per_task: dict[str, float] = field(default_factory=dict)  # shared infra, client, others
    nats_msgs_per_task: dict[str, tuple[float, float]] = field(default_factory=dict)  # connection -> (in, out)
    others_cpu_pct: float = 0.0  # of one core, over the run
    s3_objects: int = 0
    sample: str = ""
    errors: dict[str, int] = field(default_factory=dict)  # why tasks failed, and why streams were resumed


Stack = TaskManagerStack | CeleryStack


def measure(
    stack: Stack, infra: Infra, shape: str, tasks: int, rate: float | None, timeout_s: float, run: str
) -> RunResult:
    result = RunResult(stack.name, shape, tasks, rate)
    jobs = infra.jobs(run, tasks)
    own, shared = stack.roots(), infra.roots()
    before, client_before, machine_before = tree_cpu(own | shared), own_cpu(), machine_busy_seconds()
    messages_before = stack.nats_messages() if isinstance(stack, TaskManagerStack) else {}
    window_start = time.perf_counter()
    outcomes: list[Outcome] = stack.run(jobs, rate, timeout_s)
    time.sleep(SETTLE_S)
    after, client_after, machine_after = tree_cpu(own | shared), own_cpu(), machine_busy_seconds()
    messages_after = stack.nats_messages() if isinstance(stack, TaskManagerStack) else {}
    window_s = time.perf_counter() - window_start

    done = [o for o in outcomes if o.ok]
    result.ok = len(done)
    result.failed = len(outcomes) - result.ok
    for o in outcomes:
        reasons = ([o.error] if o.error else []) + [f"resumed after: {why}" for why in o.resumes]
        result.resumed += len(o.resumes)
        for reason in reasons:
            result.errors[reason[:200]] = result.errors.get(reason[:200], 0) + 1
    first = min((o.sent for o in outcomes if o.sent), default=window_start)
    last = max((o.done for o in done if o.done is not None), default=first)
    result.wall_s = last - first
    result.tasks_per_s = result.ok / result.wall_s if result.wall_s > 0 else 0.0
    latencies = [(o.done - o.sent) * 1000 for o in done if o.done is not None]
    result.latency_ms = {f"p{q}": percentile(latencies, q) for q in (50, 95, 99)}

    per_task = 1000 / max(result.ok, 1)
    measured = 0.0
    shared_names = {n for n in after if n.split(" children")[0] in shared}
    for name, (count, cpu) in after.items():
        spent = cpu - before.get(name, (0, 0.0))[1]
        measured += spent
        if name in shared_names:
            result.outside_cpu_ms_per_task[f"{name} (shared)"] = spent * per_task
        else:
            result.cpu_ms_per_task[name] = spent * per_task
            result.procs[name] = count
    result.stack_cpu_ms_per_task = sum(result.cpu_ms_per_task.values())
    client = client_after - client_before
    others = max(machine_after - machine_before - measured - client, 0.0)
    result.outside_cpu_ms_per_task[CLIENT] = client * per_task
    result.outside_cpu_ms_per_task[OTHERS] = others * per_task
    result.others_cpu_pct = others / window_s * 100
    result.s3_objects, result.sample = infra.check_outputs(run, tasks)
    for name, (msgs_in, msgs_out) in messages_after.items():
        in_before, out_before = messages_before.get(name, (0, 0))
        result.nats_msgs_per_task[name] = (
            (msgs_in - in_before) / max(tasks, 1),
            (msgs_out - out_before) / max(tasks, 1),
        )
    return result


def run_stack(name: str, infra: Infra, workdir: Path, args: argparse.Namespace, stamp: str) -> list[RunResult]:
    """Start one stack, warm it up, run the burst and the paced run, stop it whatever happens."""
    model_dir = workdir / "models"  # empty: both sides take the upscaler's Lanczos fallback
    model_dir.mkdir(parents=True, exist_ok=True)
    env = {**infra.s3.env(), "TM_MODEL_DIR": str(model_dir), "TM_DEVICE": "cpu"}
    sink = SpanSink() if name == TRACED else None
    if sink is not None:
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_BSP_SCHEDULE_DELAY": "1000"}
    stack: Stack = CeleryStack(workdir / name, env) if name == "celery" else TaskManagerStack(workdir / name, env)
    stack.name = name  # the traced task-manager is reported under its own name
    started = time.perf_counter()
    try:
        stack.start()
        print(f"{name}: started in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if args.warmup:
            warm = stack.run(infra.jobs(f"{name}-warmup-{stamp}", args.warmup), None, args.timeout)
            if not any(o.ok for o in warm):
                raise RuntimeError(f"{name}: no warm-up task succeeded: {warm[0].error}\n{stack.logs()}")
        results = []
        for shape, tasks, rate in (("burst", args.tasks, None), ("paced", args.paced_tasks, args.paced_rate)):
            if not tasks:
                continue
            time.sleep(PAUSE_S)
            if args.quiet_wait:
                wait_for_quiet(args.quiet_wait)
            print(f"{name}: {shape}, {tasks} tasks ...", file=sys.stderr, flush=True)
            result = measure(stack, infra, shape, tasks, rate, args.timeout, f"{name}-{shape}-{stamp}")
            print(run_line(result), flush=True)
            results.append(result)
        return results
    finally:
        stack.stop()
        if sink is not None:
            print(f"{name}: the sink took {sink.requests} exports, {sink.bytes / 1e6:.1f} MB", file=sys.stderr)
            sink.close()


class SpanSink:
    """An OTLP/HTTP endpoint that takes every export and keeps only counts (a collector's cost is not the stack's)."""

    def __init__(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                sink.bytes += len(self.rfile.read(length))
                sink.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.requests = self.bytes = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- tables ----------------------------------------------------------------------------------------------


def _ms(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run_line(r: RunResult) -> str:
    lines = [
        f"{r.stack} {r.shape}: {r.ok}/{r.tasks} OK, {r.failed} failed, {r.resumed} streams resumed, "
        f"{r.tasks_per_s:.1f} tasks/s, stack {r.stack_cpu_ms_per_task:.1f} CPU ms/task, latency p50/p95/p99 "
        + " / ".join(_ms(r.latency_ms.get(f"p{q}")) for q in (50, 95, 99))
        + f" ms, S3 {r.s3_objects} objects, sample: {r.sample}"
    ]
    lines += [f"  {count} x {error}" for error, count in sorted(r.errors.items(), key=lambda e: -e[1])]
    return "\n".join(lines)


def _shape(r: RunResult) -> str:
    return "burst" if r.rate is None else f"paced {r.rate:g}/s"


def summary_table(results: list[RunResult]) -> str:
    rows = [
        "| stack | run | tasks | OK | failed | tasks/s | stack CPU ms/task | latency p50 / p95 / p99 ms "
        "| S3 objects | sample check | others CPU % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        latency = " / ".join(_ms(r.latency_ms.get(f"p{q}")) for q in (50, 95, 99))
        rows.append(
            f"| {r.stack} | {_shape(r)} | {r.tasks} | {r.ok} | {r.failed} | {r.tasks_per_s:.1f} "
            f"| {r.stack_cpu_ms_per_task:.1f} | {latency} | {r.s3_objects} | {r.sample} | {r.others_cpu_pct:.0f} |"
        )
    return "\n".join(rows)


def process_table(stack: str, results: list[RunResult]) -> str:
    """CPU ms per task by process, one column per run; the shared rows are not in the stack's total."""
    runs = [r for r in results if r.stack == stack]
    if not runs:
        return ""
    names = list(dict.fromkeys(n for r in runs for n in r.cpu_ms_per_task))
    outside = list(dict.fromkeys(n for r in runs for n in r.outside_cpu_ms_per_task))
    head = f"| {stack}: CPU ms per task | procs | " + " | ".join(_shape(r) for r in runs) + " |"
    rows = [head, "| --- | --- |" + " --- |" * len(runs)]
    for name in names:
        procs = max(r.procs.get(name, 0) for r in runs)
        rows.append(f"| {name} | {procs} | " + " | ".join(_ms(r.cpu_ms_per_task.get(name), 2) for r in runs) + " |")
    rows.append("| **stack total** | | " + " | ".join(f"**{r.stack_cpu_ms_per_task:.1f}**" for r in runs) + " |")
    for name in outside:
        rows.append(f"| {name} | | " + " | ".join(_ms(r.outside_cpu_ms_per_task.get(name), 2) for r in runs) + " |")
    return "\n".join(rows)


def messages_table(results: list[RunResult]) -> str:
    """NATS messages per task by connection (the server's /connz: sent by the client, delivered to it)."""
    runs = [r for r in results if r.nats_msgs_per_task]
    if not runs:
        return ""
    names = sorted({n for r in runs for n in r.nats_msgs_per_task})
    rows = ["| task-manager: NATS msgs per task, sent / received | " + " | ".join(_shape(r) for r in runs) + " |"]
    rows.append("| --- |" + " --- |" * len(runs))
    for name in names:
        cells = [r.nats_msgs_per_task.get(name, (0.0, 0.0)) for r in runs]
        rows.append(f"| {name} | " + " | ".join(f"{i:.1f} / {o:.1f}" for i, o in cells) + " |")
    totals = [tuple(map(sum, zip(*r.nats_msgs_per_task.values(), strict=False))) for r in runs]
    rows.append("| **all clients** | " + " | ".join(f"**{t[0]:.1f} / {t[1]:.1f}**" for t in totals) + " |")
    return "\n".join(rows)


def ratio_table(results: list[RunResult], other: str = "celery", label: str = "task-manager / Celery") -> str:
    by = {(r.stack, r.shape): r for r in results}
    shapes = [s for s in ("burst", "paced") if ("task-manager", s) in by and (other, s) in by]
    if not shapes:
        return ""

    def ratio(shape: str, pick) -> str:  # type: ignore[no-untyped-def]
        ours, theirs = pick(by["task-manager", shape]), pick(by[other, shape])
        return "-" if not ours or not theirs else f"{ours / theirs:.2f}x"

    measures = [
        ("tasks/s", lambda r: r.tasks_per_s),
        ("stack CPU ms/task", lambda r: r.stack_cpu_ms_per_task),
        ("latency p50", lambda r: r.latency_ms.get("p50")),
        ("latency p99", lambda r: r.latency_ms.get("p99")),
    ]
    rows = [f"| {label} | " + " | ".join(shapes) + " |", "| --- |" + " --- |" * len(shapes)]
    rows += [f"| {label} | " + " | ".join(ratio(s, pick) for s in shapes) + " |" for label, pick in measures]
    return "\n".join(rows)


def commit() -> str:
    """The commit measured, "-dirty" when the working tree differs from it; "?" outside a git checkout."""
    try:
        args = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
        return subprocess.run(args, capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        return "?"


# -- CLI -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=500, help="tasks of the burst, all sent at once (default 500)")
    parser.add_argument("--paced-rate", type=float, default=5.0, help="tasks/s of the paced run (default 5)")
    parser.add_argument("--paced-tasks", type=int, default=150, help="tasks of the paced run (default 150)")
    parser.add_argument("--warmup", type=int, default=8, help="tasks run first on each stack, not counted (default 8)")
    parser.add_argument("--only", choices=STACKS, default=None, help="run one stack only")
    parser.add_argument(
        "--tracing", action="store_true", help=f"task-manager with tracing off, then on ({TRACED}), no Celery"
    )
    parser.add_argument("--first", choices=STACKS, default="task-manager", help="the stack that runs first")
    parser.add_argument("--timeout", type=float, default=300, help="bound of each run, s (default 300)")
    parser.add_argument("--quiet-wait", type=float, default=0, metavar="S", help="wait up to S s for an idle machine")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (every service's log)")
    parser.add_argument(
        "--size",
        default="128x96",
        metavar="WxH",
        help="photo size (default 128x96; 16x12: overhead only)",
    )
    return parser.parse_args(argv)


def _stop_on_sigterm() -> None:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through every finally: each stack and the infrastructure stop

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    width, _, height = args.size.partition("x")
    workload.SIZE = (int(width), int(height))
    _stop_on_sigterm()
    began = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    order = [args.only] if args.only else [args.first] + [s for s in ("task-manager", "celery") if s != args.first]
    if args.tracing:  # --first task-manager+otel runs the traced stack first
        order = [TRACED, "task-manager"] if args.first == TRACED else ["task-manager", TRACED]
    workdir = Path(tempfile.mkdtemp(prefix="tm-samework-"))
    results: list[RunResult] = []
    broken: list[str] = []  # stacks that could not run (start-up or warm-up failed): reported, then the next one
    try:
        infra = start_infra(workdir)
        try:
            for name in order:
                try:
                    results += run_stack(name, infra, workdir, args, stamp)
                except RuntimeError as exc:
                    print(f"{name} did not run: {exc}", file=sys.stderr, flush=True)
                    broken.append(name)
        finally:
            infra.stop()
    finally:
        # The logs explain a failure or a broken stream: kept whenever there was one.
        if args.keep or broken or any(r.errors for r in results):
            print(f"kept {workdir} (<stack>/logs/ has each process's log)", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    took = time.monotonic() - began
    print(f"\n## Same work: {' vs '.join(order)} (commit {commit()}, {stamp}, {took:.0f} s)\n")
    print(summary_table(results))
    if broken:
        print(f"\nnot measured (see the errors above): {', '.join(broken)}")
    for name in order:
        print("\n" + process_table(name, results))
    if table := messages_table(results):
        print("\n" + table)
    if ratios := ratio_table(results):
        print("\n" + ratios)
    if ratios := ratio_table(results, TRACED, f"tracing off / on ({TRACED})"):
        print("\n" + ratios)
    if args.json:
        meta = {"commit": commit(), "stamp": stamp, "seconds": took, "args": vars(args)}
        args.json.write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in results]}, indent=2, default=str))
    failed = bool(broken) or any(r.failed or r.s3_objects != r.tasks for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
