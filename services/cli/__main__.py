"""The `task-manager` command."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from services.cli import dlq, models, queues, supervisor, tasks
from shared.logging import configure_logging


def _up(args: argparse.Namespace) -> int:
    configure_logging("supervisor")
    return asyncio.run(
        supervisor.run(args.host, args.port, Path(args.data_dir), args.nats_port, args.file_root, args.s3_port)
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="task-manager", description="GPU image super-resolution task system")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start NATS (unless NATS_URL is set), the API and the four stages")
    up.add_argument("--host", default="127.0.0.1", help="API listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    up.add_argument(
        "--data-dir", default=".data", help="where the embedded NATS and S3 keep their stores (and files/: file://)"
    )
    up.add_argument("--nats-port", type=int, default=4222, help="port of the embedded NATS server")
    up.add_argument(
        "--s3-port",
        type=int,
        default=8333,
        help="port of the embedded S3 server (SeaweedFS, started unless AWS_ENDPOINT_URL_S3 or keys are set)",
    )
    up.add_argument(
        "--file-root",
        help="the one directory file:// inputs and outputs may use (default: TM_FILE_ROOT, else DATA_DIR/files); "
        "'' turns file:// off",
    )
    up.set_defaults(func=_up)
    tasks.register(commands)
    queues.register(commands)
    models.register(commands)
    dlq.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
