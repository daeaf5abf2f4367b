"""Scaling out: throughput with 1, 2, ... processes of one stage (the bottleneck), in the same run.

    python bench/scale.py                                  # the classifier x 1, 2, 3 at 64 px (face scan on)
    python bench/scale.py --stage fetcher --instances 4 --image-px 16
    python bench/scale.py --stage fetcher --input-delay-ms 250 --concurrency 1 --image-px 16  # I/O-bound fetch
    python bench/scale.py --json /tmp/scale.json

Each row is one `bench/load.py` run (its own nats-server, sink, API and stages: see bench/README.md) at
"max" (as fast as the API takes tasks), with every other stage at one process. The table gives the
tasks/s, the ratio against one instance, and the CPU the scaled stage and the whole system used, so a
ratio that stops growing can be told apart: the stage is no longer the limit, or the machine is.
The first run also names the bottleneck: the stage process busiest per task.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/scale.py`
    sys.path.insert(0, str(ROOT))

from bench.load import run, wait_for_quiet  # noqa: E402
from bench.results import OTHERS, STAGES, RunConfig, RunResult  # noqa: E402
from shared.config import Settings  # noqa: E402
from tests.system import STAGE_SERVICES  # noqa: E402

SYSTEM_ROLES = ("api", *STAGE_SERVICES, "nats-server", "sink")


def row_of(result: RunResult, role: str) -> tuple[float, float]:
    """(CPU % of one core, CPU ms per task) of `role` in `result`."""
    for row in result.processes:
        if row.role == role:
            return row.cpu_percent, row.cpu_ms_per_task
    return 0.0, 0.0


def bottleneck(result: RunResult) -> str:
    """The stage with the least capacity per process: one asyncio process does at most 1000 / (its CPU ms
    per task) tasks/s on its one core, and at most slots x 1000 / (ms in the stage) with `slots` messages
    at once (TM_CONCURRENCY) however idle the CPU; the lower bound is the stage's, the lowest the system's."""
    slots = result.config.concurrency or Settings.model_fields["concurrency"].default
    service_of = dict(zip(STAGES, STAGE_SERVICES, strict=True))
    capacity: dict[str, float] = {}
    parts = []
    for stage in STAGES:
        in_stage_ms = result.segments_ms.get(stage, {}).get("p50") or 0.0
        cpu_ms = row_of(result, service_of[stage])[1]
        by_cpu, by_slots = 1000 / max(cpu_ms, 1e-3), slots * 1000 / max(in_stage_ms, 1e-3)
        capacity[stage] = min(by_cpu, by_slots)
        limit = "CPU" if by_cpu <= by_slots else "slots"
        parts.append(f"{stage} {capacity[stage]:.0f}/s by {limit} ({cpu_ms:.1f} CPU ms, {in_stage_ms:.0f} ms in stage)")
    slowest = min(capacity, key=lambda stage: capacity[stage])
    return f"bottleneck: {service_of[slowest]}; capacity of one process ({slots} slots): " + ", ".join(parts)


def table(stage: str, results: list[RunResult]) -> str:
    base = results[0].tasks_per_s or 1.0
    head = (
        f"| {stage} processes | e2e tasks/s | vs 1 | {stage} CPU % (1 core) | {stage} CPU ms/task "
        "| system CPU ms/task | others CPU % | non-OK |"
    )
    lines = [head, "| " + " | ".join(["---"] * 8) + " |"]
    for result in results:
        cpu, per_task = row_of(result, stage)
        system_ms = sum(row_of(result, role)[1] for role in SYSTEM_ROLES)
        others = row_of(result, OTHERS)[0]
        non_ok = result.non_success + result.missing + sum(result.http_errors.values())
        lines.append(
            f"| {result.config.stage_procs[stage]} | {result.tasks_per_s:.1f} | {result.tasks_per_s / base:.2f}x "
            f"| {cpu:.0f} | {per_task:.1f} | {system_ms:.1f} | {others:.0f} | {non_ok} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=STAGE_SERVICES, default="classifier", help="the stage to scale")
    parser.add_argument("--instances", type=int, default=3, help="scale from 1 to this many processes (default 3)")
    parser.add_argument("--tasks", type=int, default=600, help="tasks per run (default 600)")
    parser.add_argument("--image-px", type=int, default=64, help="input side in px (default 64: face scan on)")
    parser.add_argument("--concurrency", type=int, default=None, help="TM_CONCURRENCY (default: the services')")
    parser.add_argument("--input-delay-ms", type=float, default=0, help="latency of every input GET (the sink's)")
    parser.add_argument("--warmup", type=int, default=50, help="tasks run (and not counted) first (default 50)")
    parser.add_argument("--timeout", type=float, default=150, help="bound of one run's measured phase, s")
    parser.add_argument("--quiet-wait", type=float, default=0, metavar="S", help="wait up to S s for an idle machine")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.input_delay_ms:
        os.environ["BENCH_SINK_DELAY_MS"] = str(args.input_delay_ms)  # read by bench/sink.py, a child of each run
    results = []
    for n in range(1, args.instances + 1):
        config = RunConfig(
            f"{args.stage} x{n}",
            args.tasks,
            0,
            concurrency=args.concurrency,
            stage_procs={args.stage: n},
            image_px=args.image_px,
            warmup=args.warmup,
            timeout_s=args.timeout,
        )
        if args.quiet_wait:
            wait_for_quiet(args.quiet_wait)
        print(f"running {config.label}: {config.tasks} tasks ...", file=sys.stderr, flush=True)
        results.append(asyncio.run(run(config)))
    print(bottleneck(results[0]))
    print(table(args.stage, results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2, default=str))
    return 1 if any(r.missing or r.non_success or r.http_errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
