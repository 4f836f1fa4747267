"""``conveyor coordinator``: run the coordinator."""

from __future__ import annotations

import argparse
import asyncio
import sys

from conveyor import logs
from conveyor.errors import ConfigurationError

from .config import CoordinatorConfig

DESCRIPTION = """\
Run the coordinator: the gRPC server that owns the database and the workflow code,
replays workflows from their journal and feeds executors tasks in FIFO order.

example:
  conveyor coordinator --db sqlite:///conveyor.db --workflows my_app.workflows
  conveyor coordinator --db postgresql+psycopg://app@db/conveyor --workflows my_app.workflows --shards 100
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--db",
        required=True,
        metavar="URL",
        help="SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://...",
    )
    parser.add_argument(
        "--workflows",
        action="append",
        required=True,
        metavar="MODULE",
        help="importable module defining @workflow functions (repeatable)",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:50051", metavar="HOST:PORT", help="gRPC address (default %(default)s)"
    )
    parser.add_argument(
        "--shards", type=int, help="shard count of a NEW database (default 100); fixed afterwards"
    )
    parser.add_argument(
        "--max-payload-bytes",
        type=int,
        default=1024 * 1024,
        help="largest args/result in bytes (default 1 MiB)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=1.0,
        help="seconds between executor heartbeats (default 1)",
    )
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=10.0,
        help="seconds without heartbeat before an executor's tasks are re-queued (default 10)",
    )
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="FULL survives power loss; NORMAL only process crashes, but commits faster (default FULL)",
    )
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING... (default INFO or $CONVEYOR_LOG_LEVEL)"
    )


def run(args: argparse.Namespace) -> int:
    from .server import serve  # heavy (gRPC server, SQLAlchemy): only when actually running

    logs.configure(args.log_level)
    try:
        config = CoordinatorConfig(
            database_url=args.db,
            workflow_modules=tuple(args.workflows),
            listen=args.listen,
            shards=args.shards,
            max_payload_bytes=args.max_payload_bytes,
            heartbeat_interval=args.heartbeat_interval,
            lease_ttl=args.lease_ttl,
            sqlite_synchronous=args.sqlite_synchronous,
        )
        asyncio.run(serve(config))
    except (ConfigurationError, ValueError) as error:
        print(f"conveyor coordinator: {error}", file=sys.stderr)
        return 2
    return 0
