"""``conveyor coordinator``: run the coordinator."""

from __future__ import annotations

import argparse
import asyncio
import sys

from conveyor import logs, tracing
from conveyor.errors import ConfigurationError, DatabaseInUse
from conveyor.settings import PRECEDENCE

from .config import OPTIONS, CoordinatorConfig
from .model import ClaimOrder

DESCRIPTION = """\
Run the coordinator: the gRPC server that owns the database and the workflow code,
replays workflows from their journal and feeds executors tasks in FIFO order.

example:
  conveyor coordinator --db sqlite:///conveyor.db --workflows my_app.workflows
  conveyor coordinator --db postgresql+psycopg://app@db/conveyor --workflows my_app.workflows --shards 100
  CONVEYOR_DB=sqlite:///conveyor.db CONVEYOR_WORKFLOWS=my_app.workflows conveyor coordinator
  conveyor coordinator --config coordinator.toml   # db = "sqlite:///conveyor.db", lease_ttl = 20, ...
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = PRECEDENCE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    OPTIONS.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from .server import serve  # heavy (gRPC server, SQLAlchemy): only when actually running

    try:
        resolved = OPTIONS.resolve(args)
        logs.configure(resolved["log_level"], resolved["log_format"])
        tracing.configure(
            resolved["otel_exporter"], "conveyor-coordinator", resolved.sources["otel_exporter"]
        )
        fields = resolved.fields(OPTIONS)
        fields["claim_order"] = ClaimOrder(fields["claim_order"])
        config = CoordinatorConfig(**fields)
        asyncio.run(serve(config))
    except (ConfigurationError, DatabaseInUse, ValueError) as error:
        print(f"conveyor coordinator: {error}", file=sys.stderr)
        return 2
    return 0
