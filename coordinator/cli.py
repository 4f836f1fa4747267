"""``conveyor coordinator``: run the coordinator."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from conveyor import logs, tracing
from conveyor.errors import ConfigurationError, DatabaseInUse

from .config import CoordinatorConfig
from .model import ClaimOrder

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
        "--task-timeout",
        type=float,
        default=600.0,
        help="start-to-close deadline in seconds of a task attempt (LLM call or handler) whose step "
        "sets no timeout; past it plus --task-deadline-grace the coordinator takes the task back "
        "and retries it (default 600)",
    )
    parser.add_argument(
        "--task-deadline-grace",
        type=float,
        default=30.0,
        help="seconds added to every attempt's timeout before the coordinator takes it back, for the "
        "executor to report its own timeout first (default 30)",
    )
    parser.add_argument(
        "--replay-timeout",
        type=float,
        default=10.0,
        help="seconds one replay of workflow code may run before that workflow is failed; workflow "
        "code that blocks or computes for longer belongs in a task handler (default 10)",
    )
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="FULL survives power loss; NORMAL only process crashes, but commits faster (default FULL)",
    )
    parser.add_argument(
        "--claim-order",
        choices=[order.value for order in ClaimOrder],
        default=ClaimOrder.FIFO.value,
        help="fifo: oldest workflow's tasks first (default); task-id: oldest task first, the pre-FIFO "
        "order, only for comparing the two in benchmarks",
    )
    monitoring = parser.add_argument_group(
        "monitoring",
        "With --auth-tokens-file, the metrics and the status page ask for a token of the monitoring "
        "(or admin) role; without it they ask for none, so they then only listen on a loopback address "
        "unless given --insecure.",
    )
    monitoring.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics",
    )
    monitoring.add_argument(
        "--http-port", type=int, metavar="PORT", help="serve the live status page at http://HOST:PORT/"
    )
    monitoring.add_argument(
        "--monitoring-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics and the status page listen on (default %(default)s)",
    )
    security = parser.add_argument_group(
        "security",
        "Without --auth-tokens-file every caller is trusted, so the coordinator then only listens on a "
        "loopback address unless given --insecure.",
    )
    security.add_argument(
        "--auth-tokens-file",
        type=Path,
        metavar="FILE",
        help="bearer tokens and their roles, one per line: 'ROLES TOKEN [EXECUTOR-ID]' "
        "(roles: client, executor, admin, monitoring)",
    )
    security.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate chain: serve TLS")
    security.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    security.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="PEM CA: require client certificates it signed (mutual TLS)",
    )
    security.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --listen or --monitoring-host address without --auth-tokens-file",
    )
    logs.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from .server import serve  # heavy (gRPC server, SQLAlchemy): only when actually running

    logs.configure(args.log_level, args.log_format)
    try:
        tracing.configure_from_environment("conveyor-coordinator")
        config = CoordinatorConfig(
            database_url=args.db,
            workflow_modules=tuple(args.workflows),
            listen=args.listen,
            shards=args.shards,
            max_payload_bytes=args.max_payload_bytes,
            heartbeat_interval=args.heartbeat_interval,
            lease_ttl=args.lease_ttl,
            default_task_timeout=args.task_timeout,
            task_deadline_grace=args.task_deadline_grace,
            replay_timeout=args.replay_timeout,
            sqlite_synchronous=args.sqlite_synchronous,
            claim_order=ClaimOrder(args.claim_order),
            auth_tokens_file=args.auth_tokens_file,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            tls_client_ca_file=args.tls_client_ca,
            insecure=args.insecure,
            metrics_port=args.metrics_port,
            http_port=args.http_port,
            monitoring_host=args.monitoring_host,
        )
        asyncio.run(serve(config))
    except (ConfigurationError, DatabaseInUse, ValueError) as error:
        print(f"conveyor coordinator: {error}", file=sys.stderr)
        return 2
    return 0
