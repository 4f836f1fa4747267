"""The standard suite (``make bench``): every scenario with its default options, one after another.

``--quick`` runs each at a small scale instead (a few minutes in all), to check the
harness and see the shape of the numbers; the published numbers come from the full suite.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from types import ModuleType

from rich.console import Console

from . import agent_loop, fifo, overhead, peer, ratelimit, scale

NAME = "suite"

#: (scenario, its options) in the order they run.
STANDARD: list[tuple[ModuleType, list[str]]] = [
    (overhead, []),
    (fifo, []),
    (ratelimit, []),
    (scale, []),
    # Today's code cannot finish 1,000- and 5,000-turn loops in reasonable time (each step
    # replays the whole loop): in the suite each length is stopped after 5 minutes and
    # measured over the steps it did. `python -m bench agent-loop` runs the full scenario.
    (agent_loop, ["--db", "sqlite", "--time-limit", "300"]),
    (peer, []),
]
QUICK: list[tuple[ModuleType, list[str]]] = [
    (overhead, ["--workflows", "1000", "--executors", "1,2", "--concurrency", "100", "--repeats", "1"]),
    (
        fifo,
        ["--workflows", "2000", "--executors", "2", "--concurrency", "250", "--latency", "uniform:0.8,1.2"],
    ),
    (ratelimit, ["--duration", "60", "--warmup", "30"]),
    (scale, ["--sizes", "2000,10000"]),
    (agent_loop, ["--quick"]),
    (
        peer,
        ["--workflows", "200", "--agent-workflows", "5", "--agent-turns", "50", "--peer-time-limit", "300"],
    ),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--quick", action="store_true", help="small scale: minutes instead of the better part of an hour"
    )
    parser.add_argument("--only", default="", help="comma-separated scenarios to run (default: all)")


def run(args: argparse.Namespace) -> int:
    console = Console()
    plan = QUICK if args.quick else STANDARD
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    failures = []
    began = time.monotonic()
    for module, options in plan:
        if wanted and module.NAME not in wanted:
            continue
        parser = argparse.ArgumentParser(prog=f"python -m bench {module.NAME}")
        module.add_arguments(parser)
        scenario_args = parser.parse_args(options)
        console.rule(f"{module.NAME} {' '.join(options)}")
        started = time.monotonic()
        handler: Callable[[argparse.Namespace], int] = module.run
        # Each scenario records the command that reproduces it: the one it is equivalent to.
        suite_argv, sys.argv = sys.argv, [sys.argv[0], module.NAME, *options]
        try:
            if handler(scenario_args) != 0:
                failures.append(module.NAME)
        finally:
            sys.argv = suite_argv
        console.print(f"{module.NAME} took {time.monotonic() - started:.0f}s")
    console.rule(f"suite finished in {(time.monotonic() - began) / 60:.1f} min")
    if failures:
        console.print(
            f"[red]scenarios with failures: {', '.join(failures)}[/red] (see their summaries above)"
        )
    return 1 if failures else 0
