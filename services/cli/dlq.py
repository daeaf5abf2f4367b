"""`task-manager dlq list|show|replay|discard`: the dead-letter stream, for operators.

The same data is visible with the NATS CLI: `nats stream view TM_DEAD`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from shared.config import Settings
from shared.nats import Topology, bind, connect
from shared.runtime.deadletters import discard_dead, get_dead, list_dead, replay_dead
from shared.taskstate.store import TaskStore


def register(subparsers: Any) -> None:
    dlq = subparsers.add_parser("dlq", help="inspect, replay or discard dead-lettered tasks")
    commands = dlq.add_subparsers(dest="dlq_command", required=True)
    commands.add_parser("list", help="one line per dead letter").set_defaults(func=_sync(list_command))
    show = commands.add_parser("show", help="a dead letter's headers and message")
    show.add_argument("seq", type=int)
    show.set_defaults(func=_sync(show_command))
    for name, helptext, command in (
        ("replay", "run the task again from the first stage", replay_command),
        ("discard", "delete the dead letter", discard_command),
    ):
        sub = commands.add_parser(name, help=helptext)
        target = sub.add_mutually_exclusive_group(required=True)
        target.add_argument("seq", type=int, nargs="?")
        target.add_argument("--all", action="store_true", help="every dead letter")
        sub.set_defaults(func=_sync(command))


def _sync(command: Callable[[Topology, argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def main() -> int:
            settings = Settings()
            nc = await connect(settings, name="task-manager-cli")
            try:
                return await command(await bind(nc), args)
            finally:
                await nc.close()

        return asyncio.run(main())

    return run


async def list_command(topology: Topology, args: argparse.Namespace) -> int:
    letters = await list_dead(topology.js)
    print(f"{'SEQ':>6}  {'FAILED_AT':24}  {'STAGE':8}  {'TASK_ID':36}  {'TRIES':>5}  ERROR")
    for dead in letters:
        row = dead.summary()
        print(
            f"{row['seq']:>6}  {row['failed_at']:24}  {row['stage']:8}  {row['task_id']:36}  "
            f"{row['attempts']:>5}  {row['error']}"
        )
    print(f"{len(letters)} dead letter(s)")
    return 0


async def show_command(topology: Topology, args: argparse.Namespace) -> int:
    dead = await get_dead(topology.js, args.seq)
    if dead is None:
        print(f"no dead letter with seq {args.seq}")
        return 1
    message = dead.message.summary() if dead.message else None
    print(json.dumps({**dead.summary(), "headers": dead.headers, "message": message}, indent=2))
    return 0


async def _targets(topology: Topology, args: argparse.Namespace) -> list[int]:
    return [d.seq for d in await list_dead(topology.js)] if args.all else [args.seq]


async def replay_command(topology: Topology, args: argparse.Namespace) -> int:
    store = TaskStore.of(topology)
    failures = 0
    for seq in await _targets(topology, args):
        try:
            print(f"replayed {seq}: task {await replay_dead(topology.js, store, seq)}")
        except LookupError as exc:
            print(f"cannot replay {seq}: {exc}")
            failures += 1
    return 1 if failures else 0


async def discard_command(topology: Topology, args: argparse.Namespace) -> int:
    failures = 0
    for seq in await _targets(topology, args):
        if await discard_dead(topology.js, seq):
            print(f"discarded {seq}")
        else:
            print(f"no dead letter with seq {seq}")
            failures += 1
    return 1 if failures else 0
