"""The ``conveyor`` command: one entry point for every process and client action.

Each subcommand's flags and behaviour live with the component it runs; this module
only mounts them.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__

DESCRIPTION = """\
Conveyor: durable LLM workflows, finished in the order they were started.

processes:
  conveyor coordinator   the gRPC server: database, workflow replay, FIFO queue
  conveyor executor      a worker that runs LLM calls and task handlers
  conveyor simulator     an Anthropic Messages API simulator (tests, demo, benchmarks)

clients (against --coordinator, default 127.0.0.1:50051):
  conveyor start NAME --args JSON      start a workflow, print its id
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


def build_parser() -> argparse.ArgumentParser:
    from bench.simulator import cli as simulator_cli
    from clients import cli as client_cli
    from coordinator import cli as coordinator_cli
    from executor import cli as executor_cli

    parser = argparse.ArgumentParser(
        prog="conveyor", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    # The coordinator and executor modules set their own description; the simulator's also
    # serves `python -m bench.simulator`, so its `conveyor simulator` example lives here.
    for name, module, summary, description in (
        ("coordinator", coordinator_cli, "run the coordinator", None),
        ("executor", executor_cli, "run an executor", None),
        ("simulator", simulator_cli, "run the Anthropic API simulator", SIMULATOR_DESCRIPTION),
    ):
        sub = commands.add_parser(
            name, help=summary, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    client_cli.add_commands(commands)  # each client command sets its own handler
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
