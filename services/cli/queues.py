"""`task-manager queues`: the work queues as a table, read from NATS (`NATS_URL` / `TM_NATS_URL`).

One row per priority stream and stage consumer (highest priority first): messages waiting to be
delivered, held by workers, redelivered, and how long the oldest waiting one has waited; then one
row per stage over all priorities. The same numbers are on the dashboard (shared/queues.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import nats
from pydantic import ValidationError

from shared.config import Settings
from shared.queues import QueueSnapshot, format_age, snapshot

CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 20
HEADER = (
    f"{'STREAM':<12} {'PRIO':>4}  {'STAGE':<9} {'WAITING':>8} {'IN_PROGRESS':>11} {'REDELIVERED':>11}  OLDEST_WAITING"
)


def register(subparsers: Any) -> None:
    queues = subparsers.add_parser("queues", help="waiting, in-progress and redelivered messages per queue")
    queues.add_argument("--nats", help="NATS server URL (default: NATS_URL / TM_NATS_URL, else nats://127.0.0.1:4222)")
    queues.add_argument("--busy", action="store_true", help="only the queues with something in them")
    queues.add_argument("--json", action="store_true", help="the snapshot as JSON")
    queues.set_defaults(func=queues_command)


async def _ignore(_: Exception) -> None:
    """nats.py logs a traceback per failed connect attempt by default; the command reports it once."""


async def read(nats_url: str) -> QueueSnapshot:
    servers = [url.strip() for url in nats_url.split(",") if url.strip()]
    nc = await nats.connect(
        servers=servers,
        name="task-manager-cli",
        connect_timeout=CONNECT_TIMEOUT_S,
        # a positive bound: nats.py keeps trying a refusing server forever with 0 (or -1)
        max_reconnect_attempts=1,
        reconnect_time_wait=0.2,
        error_cb=_ignore,
    )
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            return await snapshot(nc.jetstream())
    finally:
        await nc.close()


def queues_command(args: argparse.Namespace) -> int:
    try:
        nats_url = args.nats or Settings().nats_url
    except ValidationError as exc:
        print(f"task-manager queues: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        found = asyncio.run(read(nats_url))
    except Exception as exc:  # unreachable server, no JetStream, a timeout: one readable line
        print(
            f"task-manager queues: cannot read the queues from NATS at {nats_url}: {exc or type(exc).__name__}",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(found.model_dump_json(indent=2))
        return 0
    print(render(found, busy_only=args.busy))
    return 0


def render(found: QueueSnapshot, busy_only: bool = False) -> str:
    lines = [HEADER]
    for row in found.consumers:
        if busy_only and not (row.pending or row.ack_pending or row.redelivered):
            continue
        lines.append(
            f"{row.stream:<12} {row.priority:>4}  {row.stage:<9} {row.pending:>8} {row.ack_pending:>11} "
            f"{row.redelivered:>11}  {format_age(row.oldest_waiting_s)}"
        )
    if len(lines) == 1:
        lines.append("(no queue holds anything)" if busy_only else "(no work queues declared: is the system up?)")
    lines.append("")
    for total in found.stages:
        lines.append(
            f"{'all':<12} {'':>4}  {total.stage:<9} {total.pending:>8} {total.ack_pending:>11} "
            f"{total.redelivered:>11}  {format_age(total.oldest_waiting_s)}"
        )
    held = sum(s.messages for s in found.streams)
    lines.append(f"{held} message(s) in {len(found.streams)} work stream(s)")
    return "\n".join(lines)
