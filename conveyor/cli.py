"""The ``conveyor`` command: one entry point for every process and client action.

Each subcommand's flags and behaviour live with the component it runs; this module
only mounts them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from . import __version__
from .errors import MissingExtra

DESCRIPTION = """\
Conveyor: durable LLM workflows, finished in the order they were started.

processes:
  conveyor coordinator   the gRPC server: database, workflow replay, FIFO queue
  conveyor executor      a worker that runs LLM calls and task handlers
  conveyor simulator     an Anthropic Messages API simulator (tests, demo, benchmarks)
  conveyor replay-check  replay stored journals against new workflow code, before a deploy

clients (against --coordinator, default 127.0.0.1:50051):
  conveyor start NAME --args JSON      start a workflow, print its id (--args @FILE, - for stdin)
  conveyor get ID [--json]             a workflow, its result and its steps
  conveyor list / count                workflows by status and name, page by page / per status
  conveyor wait ID...                  wait until workflows finish
  conveyor explain ID                  why a workflow is where it is, in plain words
  conveyor cancel ID... | --all ...    cancel workflows, or in bulk by filter (--dry-run)
  conveyor admin ACTION                fail-pending, bump-epoch, clear-replay-queue,
                                       clear-task-queue, diagnose

Run `conveyor COMMAND --help` for a command's options and an example.
"""

SIMULATOR_DESCRIPTION = """\
Serve a simulated Anthropic Messages API (POST /v1/messages) for tests, the demo and
benchmarks; point executors at it with --anthropic-base-url.

example:
  conveyor simulator --listen 127.0.0.1:8787 --latency lognormal:1,0.5 --rpm 4000 --error-529 0.02
"""


#: The processes: subcommand, the module that defines it, the extra its dependencies come with.
PROCESSES = (
    ("coordinator", "conveyor.coordinator.cli", "coordinator", "run the coordinator", None),
    ("executor", "conveyor.executor.cli", "executor", "run an executor", None),
    ("simulator", "conveyor.testing.simulator.cli", "testing", "run the Anthropic API simulator", None),
    (
        "replay-check",
        "conveyor.coordinator.replay_check_cli",
        "coordinator",
        "replay stored journals against new workflow code (before a deploy)",
        None,
    ),
)
#: Top-level modules that come with the extras (pyproject.toml's optional dependencies).
EXTRAS_MODULES = frozenset(
    {"sqlalchemy", "alembic", "psycopg", "aiohttp", "anthropic", "rich", "prometheus_client"}
    | {"grpc_health", "grpc_reflection"}
)
#: The client commands (conveyor.client.cli mounts them); their output needs the ``cli`` extra.
CLIENT_COMMANDS = ("start", "get", "list", "count", "wait", "explain", "cancel", "admin")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conveyor", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    parser.set_defaults(extra="cli")  # the client commands'; each process sets its own
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    # The coordinator and executor modules set their own description; the simulator's also
    # serves `python -m conveyor.testing.simulator`, so its `conveyor simulator` example lives here.
    for name, module_name, extra, summary, description in PROCESSES:
        description = SIMULATOR_DESCRIPTION if name == "simulator" else description
        sub = commands.add_parser(
            name, help=summary, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        try:
            module = _import(module_name, f"conveyor {name}", extra)
        except MissingExtra as missing:
            _refuse(sub, missing)
            continue
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run, extra=extra)
    try:
        client_cli = _import("conveyor.client.cli", "the client commands", "cli")
    except MissingExtra as missing:
        for name in CLIENT_COMMANDS:
            _refuse(commands.add_parser(name, help=f"(needs conveyor[{missing.extra}])"), missing)
    else:
        client_cli.add_commands(commands)  # each client command sets its own handler
    return parser


def _import(module_name: str, feature: str, extra: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if not _from_an_extra(error):
            raise
        raise MissingExtra(feature, extra, error.name) from error


def _from_an_extra(error: ModuleNotFoundError) -> bool:
    """Whether the missing module is one the extras install (not the user's, not ours)."""
    return (error.name or "").partition(".")[0] in EXTRAS_MODULES


def _refuse(parser: argparse.ArgumentParser, missing: MissingExtra) -> None:
    """A command whose extra is not installed: it takes any arguments and says what to install."""
    parser.add_argument("ignored", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def refuse(_args: argparse.Namespace) -> int:
        print(f"conveyor: {missing}", file=sys.stderr)
        return 2

    parser.set_defaults(handler=refuse)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ModuleNotFoundError as error:
        # Commands import their heavy dependencies only when they run.
        if not _from_an_extra(error):
            raise
        missing = MissingExtra(f"conveyor {args.subcommand}", args.extra, error.name)
        print(f"conveyor: {missing}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
