"""Load generator: the whole system on loopback, N tasks over HTTP at a target rate, and what it costs.

    python bench/load.py --tasks 2000 --rate 400 --procs-per-stage 1
    python bench/load.py --tasks 400 --rate 20                 # the latency figure
    python bench/load.py --tasks 2000 --rate 0                 # as fast as the API takes them
    python bench/load.py --compare                             # rate 20; max x 1 proc/stage; max x 2
    python bench/load.py --tasks 2000 --rate 0 --profile /tmp/prof   # + py-spy on every service
    python bench/load.py --tasks 1500 --rate 0 --variants "none;blobs-kv"  # a proposal, measured

Each run starts its own nats-server (temp store), an HTTP sink serving a tiny real PNG (and taking
PUTs), the API and the four stages as `python -m services.<name>` with an empty TM_MODEL_DIR (the
upscaler's Lanczos fallback: a trivial stage workload), then submits open-loop (on a schedule, never
waiting for completions) over keep-alive httpx clients. Completions are the task events a core
subscriber on `task.events.>` hears. `--whatif`/`--variants` start the services with patches from
bench/whatif/ (each a proposal of bench/README.md). See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/load.py`: make shared/, services/, tests/ importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import nats  # noqa: E402
import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402

from bench.harness import Harness, Profiler, machine_busy_seconds  # noqa: E402
from bench.results import (  # noqa: E402
    OTHERS,
    ROLES,
    ProcessRow,
    RunConfig,
    RunResult,
    iso_s,
    percentile,
    report,
    segments,
    summary_table,
)
from bench.stacks import summarise  # noqa: E402
from shared.messages import TASK_NAME  # noqa: E402
from shared.wire import EVENTS_SUBJECTS  # noqa: E402

WARMUP_TIMEOUT_S = 60.0
MAX_INFLIGHT_POSTS = 64  # concurrent POSTs at most (keep-alive connections to the API)
# httpx's pool scans its connections on every request: one client with 64 connections costs the
# generator ~4.3 ms of CPU per POST, eight clients of eight ~1.0 ms (bench/README.md). On two cores the
# generator's CPU is the system's loss, so the POSTs go round-robin over small pools.
CLIENT_SHARDS = 8


def tiny_png(size_px: int) -> bytes:
    """A real photo (scikit-image's chelsea), shrunk to size x size, as PNG."""
    photo = Path(skimage.data.__file__).parent / "chelsea.png"
    image = Image.open(photo).convert("RGB").resize((size_px, size_px), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Observer:
    """Hears every task event and remembers when, keyed by task id."""

    def __init__(self) -> None:
        self.events: dict[str, tuple[float, dict]] = {}
        self.changed = asyncio.Event()

    async def on_event(self, msg) -> None:  # type: ignore[no-untyped-def]
        heard = time.perf_counter()
        status = json.loads(msg.data)
        self.events.setdefault(status["task_id"], (heard, status))
        self.changed.set()

    async def wait_for(self, task_ids: set[str], deadline: float) -> bool:
        """Until every id in `task_ids` has an event; False if `deadline` (perf_counter) passes first."""
        while not task_ids <= self.events.keys():
            self.changed.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=min(left, 1.0))
            except TimeoutError:
                pass
        return True


@dataclass
class Submission:
    sent: float
    answered: float = 0.0
    status_code: int = 0
    task_id: str | None = None
    error: str | None = None


class Submitter:
    def __init__(self, clients: list[httpx.AsyncClient], input_url: str, output_for) -> None:  # type: ignore[no-untyped-def]
        self.clients = clients
        self.input_url = input_url
        self.output_for = output_for

    async def submit(self, index: int) -> Submission:
        body = {"task_name": TASK_NAME, "args": [self.input_url, self.output_for(index)], "priority": 5}
        record = Submission(sent=time.perf_counter())
        try:
            response = await self.clients[index % len(self.clients)].post("/api/v1/tasks", json=body)
            record.status_code = response.status_code
            if response.status_code in (200, 202):
                record.task_id = response.json()["task_id"]
            else:
                record.error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            record.error = type(exc).__name__
        record.answered = time.perf_counter()
        return record

    async def closed_loop(self, count: int, start: int, parallel: int) -> list[Submission]:
        gate = asyncio.Semaphore(parallel)

        async def one(index: int) -> Submission:
            async with gate:
                return await self.submit(index)

        return list(await asyncio.gather(*(one(start + i) for i in range(count))))

    async def open_loop(self, count: int, start: int, rate: float) -> tuple[list[Submission], float]:
        """Submit on a schedule (index i at t0 + i/rate), never waiting for answers; also the worst
        lag of the schedule (the generator itself falling behind)."""
        began = time.perf_counter()
        lag = 0.0
        pending = []
        for i in range(count):
            due = began + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(lag, time.perf_counter() - due)
            pending.append(asyncio.create_task(self.submit(start + i)))
        return list(await asyncio.gather(*pending)), lag


async def run(config: RunConfig) -> RunResult:
    """One benchmark run on a fresh system; the processes are always stopped at the end."""
    label = config.label.replace(" ", "_").replace("/", "_").replace(",", "").replace("@", "at")
    profiler = Profiler(config.profile_dir / label) if config.profile_dir else None  # fails early without py-spy
    workdir = Path(tempfile.mkdtemp(prefix="tm-bench-"))
    harness = Harness(
        workdir,
        config.procs_per_stage,
        config.concurrency,
        env=config.env,
        whatif=config.whatif,
        site=config.site,
        stage_procs=config.stage_procs,
    )
    try:
        await harness.start(tiny_png(config.image_px))
        return await _measure(config, harness, workdir, profiler)
    finally:
        harness.stop()
        if config.keep:
            print(f"kept {workdir} (logs/ has every service's log)", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _measure(config: RunConfig, harness: Harness, workdir: Path, profiler: Profiler | None) -> RunResult:
    assert harness.nats is not None
    result = RunResult(config)
    observer = Observer()
    nc = await nats.connect(harness.nats.url, name="bench")
    await nc.subscribe(EVENTS_SUBJECTS, cb=observer.on_event)
    out_dir = workdir / "out"
    out_dir.mkdir()
    input_url = f"{harness.sink_url}/input.png" if config.input == "http" else f"file://{workdir}/input.png"
    if config.output == "http":
        output_for = lambda i: f"{harness.sink_url}/out/{i}.png"  # noqa: E731
    else:
        output_for = lambda i: f"file://{out_dir}/{i}.png"  # noqa: E731
    per_shard = MAX_INFLIGHT_POSTS // CLIENT_SHARDS
    # uvicorn closes a connection idle for 5 s (timeout_keep_alive); httpx would reuse it up to its own
    # 5 s expiry, and a POST sent on a connection the server is closing fails with ReadError.
    limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard, keepalive_expiry=2.0)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=harness.api_url, limits=limits, timeout=60.0))
            for _ in range(CLIENT_SHARDS)
        ]
        submitter = Submitter(clients, input_url, output_for)
        if config.warmup:
            warm = await submitter.closed_loop(config.warmup, -config.warmup, parallel=8)
            ids = {s.task_id for s in warm if s.task_id}
            if not await observer.wait_for(ids, time.perf_counter() + WARMUP_TIMEOUT_S):
                raise RuntimeError(f"warm-up tasks did not finish in {WARMUP_TIMEOUT_S}s:\n{harness.logs()}")
        cpu_before, conns_before = harness.cpu_snapshot(), await harness.connections()
        if profiler:
            profiler.start(harness.children)
        began = time.perf_counter()
        deadline = began + config.timeout_s
        if config.rate > 0:
            submissions, lag = await submitter.open_loop(config.tasks, 0, config.rate)
        else:
            submissions, lag = await submitter.closed_loop(config.tasks, 0, MAX_INFLIGHT_POSTS), 0.0
        result.submit_s = time.perf_counter() - began
        accepted = {s.task_id for s in submissions if s.task_id}
        await observer.wait_for(accepted, deadline)
        cpu_after, conns_after = harness.cpu_snapshot(), await harness.connections()
        profiles = profiler.stop() if profiler else {}
    await nc.close()

    finished = [observer.events[s.task_id] + (s,) for s in submissions if s.task_id in observer.events]
    last = max((heard for heard, _, _ in finished), default=time.perf_counter())
    result.wall_s = last - began
    result.submitted = len(accepted)
    result.schedule_lag_max_ms = lag * 1000
    for s in submissions:
        if s.error:
            result.http_errors[s.error] = result.http_errors.get(s.error, 0) + 1
    for _, status, _ in finished:
        result.states[status["state"]] = result.states.get(status["state"], 0) + 1
        if status["state"] != "SUCCESS":
            error = str(status.get("error"))[:160]
            result.errors[error] = result.errors.get(error, 0) + 1
    result.missing = len(accepted) - len(finished)
    result.tasks_per_s = result.states.get("SUCCESS", 0) / result.wall_s if result.wall_s > 0 else 0.0
    done = [(heard, status, s) for heard, status, s in finished if status["state"] == "SUCCESS"]
    client_ms = [(heard - s.sent) * 1000 for heard, _, s in done]
    server_ms = [(iso_s(st["completed_at"]) - iso_s(st["submitted_at"])) * 1000 for _, st, _ in done]
    api_ms = [(s.answered - s.sent) * 1000 for s in submissions if s.task_id]
    steps = [segments(st) for _, st, _ in done]
    step_ms = {name: [s[name] for s in steps if name in s] for name in (steps[0] if steps else {})}
    result.segments_ms = {name: {} for name in step_ms}
    for values, target in (
        (client_ms, result.latency_ms),
        (server_ms, result.server_latency_ms),
        (api_ms, result.api_ms),
        *((values, result.segments_ms[name]) for name, values in step_ms.items()),
    ):
        for q in (50, 95, 99):
            target[f"p{q}"] = percentile(values, q)
        target["max"] = max(values, default=None)
    result.processes = _process_rows(harness, cpu_before, cpu_after, conns_before, conns_after, result)
    per_task_ms = {row.role: row.cpu_ms_per_task for row in result.processes}
    for name, raw in profiles.items():
        if raw.exists():
            summary = summarise(raw)
            role = next((c.role for c in harness.children if c.name == name), name)
            result.profiles[name] = {"cpu_ms_per_task": per_task_ms.get(role), **asdict(summary)}
    return result


def _process_rows(
    harness: Harness,
    cpu_before: dict[str, float],
    cpu_after: dict[str, float],
    conns_before: dict[str, dict[str, int]],
    conns_after: dict[str, dict[str, int]],
    result: RunResult,
) -> list[ProcessRow]:
    tasks = max(result.states.get("SUCCESS", 0), 1)
    window = max(result.wall_s, 1e-9)
    names_by_role: dict[str, list[str]] = {}
    for child in harness.children:
        names_by_role.setdefault(child.role, []).append(child.name)
    names_by_role["load generator"] = ["load generator"]
    rows = []
    for role in ROLES:
        names = names_by_role.get(role, [])
        cpu = sum(cpu_after.get(n, 0.0) - cpu_before.get(n, 0.0) for n in names)
        conn = role if role in ("api", "fetcher", "classifier", "upscaler", "uploader") else None
        if role == "load generator":
            conn = "bench"
        nats_in = nats_out = None
        if conn is not None and conn in conns_after:
            before = conns_before.get(conn, {"in_msgs": 0, "out_msgs": 0})
            nats_in = (conns_after[conn]["in_msgs"] - before["in_msgs"]) / tasks
            nats_out = (conns_after[conn]["out_msgs"] - before["out_msgs"]) / tasks
        rows.append(ProcessRow(role, len(names), cpu / window * 100, cpu / tasks * 1000, nats_in, nats_out))
    ours = sum(row.cpu_ms_per_task for row in rows) * tasks / 1000
    others = max(cpu_after["machine"] - cpu_before["machine"] - ours, 0.0)
    rows.append(ProcessRow(OTHERS, 0, others / window * 100, others / tasks * 1000, None, None))
    return rows


# -- CLI -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000, help="tasks to submit (default 2000)")
    parser.add_argument("--rate", type=float, default=400, help="offered tasks/s, open loop; 0 = max (default 400)")
    parser.add_argument("--procs-per-stage", type=int, default=1, help="processes of each stage (default 1)")
    parser.add_argument("--concurrency", type=int, default=None, help="TM_CONCURRENCY (default: the services')")
    parser.add_argument("--image-px", type=int, default=16, help="input image side in px (default 16)")
    parser.add_argument("--input", choices=("http", "file"), default="http", help="input URL kind (default http)")
    parser.add_argument("--output", choices=("file", "http"), default="file", help="output URL kind (default file)")
    parser.add_argument("--warmup", type=int, default=50, help="tasks run (and not counted) first (default 50)")
    parser.add_argument("--timeout", type=float, default=150, help="bound of one run's measured phase, s")
    parser.add_argument("--compare", action="store_true", help="run the standard set and print one table")
    parser.add_argument("--latency-tasks", type=int, default=400, help="tasks of --compare's rate-20 run")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR", help="py-spy every service into DIR")
    parser.add_argument("--whatif", default="", help="comma-separated bench/whatif patches for every run")
    parser.add_argument(
        "--variants",
        default=None,
        help="';'-separated what-if sets, one run each, same load (e.g. 'none;blobs-kv;quiet-logs')",
    )
    parser.add_argument("--site", default=None, metavar="DIR", help="extra packages for the services (uvloop)")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="extra service environment")
    parser.add_argument("--keep", action="store_true", help="keep each run's temp dir (service logs)")
    parser.add_argument("--quiet-wait", type=float, default=0, metavar="S", help="wait up to S s for an idle machine")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results as JSON")
    return parser.parse_args(argv)


def configs(args: argparse.Namespace) -> list[RunConfig]:
    common = {
        "concurrency": args.concurrency,
        "image_px": args.image_px,
        "input": args.input,
        "output": args.output,
        "warmup": args.warmup,
        "timeout_s": args.timeout,
        "profile_dir": args.profile,
        "site": args.site,
        "env": dict(item.split("=", 1) for item in args.env),
        "keep": args.keep,
    }
    whatif = tuple(name for name in args.whatif.split(",") if name)
    label = f"rate {args.rate:g}" if args.rate else "max rate"
    if args.variants is not None:
        runs = []
        for variant in args.variants.split(";"):
            names = tuple(n for n in variant.split(",") if n and n != "none")
            label = "+".join(names) or "baseline"
            runs.append(RunConfig(label, args.tasks, args.rate, args.procs_per_stage, whatif=whatif + names, **common))
        return runs
    if not args.compare:
        return [RunConfig(label, args.tasks, args.rate, args.procs_per_stage, whatif=whatif, **common)]
    return [
        RunConfig("latency @20/s", args.latency_tasks, 20, 1, whatif=whatif, **common),
        RunConfig("max, 1 proc/stage", args.tasks, 0, 1, whatif=whatif, **common),
        RunConfig("max, 2 procs/stage", args.tasks, 0, 2, whatif=whatif, **common),
    ]


def wait_for_quiet(max_wait_s: float, busy_limit: float = 0.25) -> float:
    """Wait (at most `max_wait_s`) until the machine is quiet: under `busy_limit` cores busy over a
    second. Other engineers' test runs share these two cores; returns the last busy figure seen."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = machine_busy_seconds() - before
        if busy < busy_limit or time.monotonic() >= deadline:
            return busy
        print(f"  machine busy ({busy:.2f} cores used by others), waiting ...", file=sys.stderr, flush=True)


def _stop_on_sigterm() -> None:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through run()'s finally: every child is stopped

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _stop_on_sigterm()
    results = []
    for config in configs(args):
        if args.quiet_wait:
            wait_for_quiet(args.quiet_wait)
        print(f"running {config.label}: {config.tasks} tasks ...", file=sys.stderr, flush=True)
        result = asyncio.run(run(config))
        results.append(result)
        print(report(result), flush=True)
    print("\n" + summary_table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2, default=str))
    failed = any(r.missing or r.non_success or r.http_errors for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
