"""``python -m bench SCENARIO [options]``: run one benchmark scenario, or ``suite`` for all of them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from . import scaling_sim
from .scenarios import agent_loop, bigdb, dbcost, fanout, fifo, overhead, peer, ratelimit, scale, suite


def scenarios() -> dict[str, ModuleType]:
    return {
        module.NAME: module
        for module in (
            overhead,
            fifo,
            fanout,
            ratelimit,
            scale,
            agent_loop,
            peer,
            bigdb,
            dbcost,
            scaling_sim,
            suite,
        )
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Conveyor's benchmarks. Each scenario starts its own simulator, coordinator and "
        "executors as separate processes and writes JSON, Markdown and PNG results under results/.",
    )
    commands = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name, module in scenarios().items():
        sub = commands.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    del args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
