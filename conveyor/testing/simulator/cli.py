"""Command line for the simulator: ``python -m conveyor.testing.simulator`` or ``conveyor simulator``.

:func:`add_arguments` and :func:`run` are separate so the ``conveyor`` CLI can
mount the same flags as a subcommand. The API key is read from a file, never
from argv, because argv is visible to every user of the machine via ``ps``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from .config import SimulatorConfig
from .latency import SPEC_HELP
from .server import Simulator

__all__ = ["add_arguments", "main", "run"]

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8787"
_EXIT_USAGE = 2
_EXIT_LISTEN_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to ``parser``."""
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help="address to serve on; port 0 picks a free port, printed at startup (default: %(default)s)",
    )
    parser.add_argument(
        "--latency",
        default="fixed:0",
        metavar="SPEC",
        help=f"delay before each answer: {SPEC_HELP} (default: %(default)s)",
    )
    for flag, what in (("--rpm", "requests"), ("--itpm", "input tokens"), ("--otpm", "output tokens")):
        parser.add_argument(
            flag,
            type=int,
            default=0,
            metavar="N",
            help=f"rate limit in {what} per minute, a continuously refilling bucket; 0 = unlimited "
            "(default: %(default)s)",
        )
    for flag, what in (
        ("--error-529", "answered 529 overloaded_error"),
        ("--error-500", "answered 500 api_error"),
        ("--hang", "never answered (the connection stays open until the client gives up)"),
        ("--truncate", "cut off halfway through the response body"),
    ):
        parser.add_argument(
            flag,
            type=float,
            default=0.0,
            metavar="P",
            help=f"share of admitted requests {what}, 0..1; all four shares together at most 1 "
            "(default: %(default)s)",
        )
    parser.add_argument(
        "--reply",
        default="echo",
        metavar="MODE",
        help="'echo' answers with the last user message's text, 'fixed:TEXT' always with TEXT; "
        "both cut to max_tokens*4 characters (default: %(default)s)",
    )
    parser.add_argument(
        "--api-key-file",
        type=Path,
        metavar="PATH",
        help="require the API key stored in this file (as x-api-key or Authorization: Bearer); "
        "without it any key is accepted",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="seed for latency and fault draws, making a run reproducible (default: random)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; return the process exit code."""
    try:
        host, port = _parse_listen(args.listen)
        config = SimulatorConfig(
            latency=args.latency,
            rpm=args.rpm,
            itpm=args.itpm,
            otpm=args.otpm,
            error_529=args.error_529,
            error_500=args.error_500,
            hang=args.hang,
            truncate=args.truncate,
            reply=args.reply,
            api_key=_read_api_key(args.api_key_file) if args.api_key_file else None,
            seed=args.seed,
        )
    except ValueError as exc:
        logger.error("invalid simulator settings: %s", exc)
        return _EXIT_USAGE
    try:
        asyncio.run(_serve(config, host, port))
    except OSError as exc:
        logger.error("cannot listen on %s: %s", args.listen, exc)
        return _EXIT_LISTEN_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m conveyor.testing.simulator``."""
    parser = argparse.ArgumentParser(
        prog="python -m conveyor.testing.simulator",
        description="Serve a simulated Anthropic Messages API (POST /v1/messages) for tests and benchmarks.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)


async def _serve(config: SimulatorConfig, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Simulator(config, host, port) as simulator:
            print(f"simulator listening on {simulator.base_url} ({config.describe()})", flush=True)
            await stop.wait()
            logger.info("shutting down")
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"--listen must be HOST:PORT with a port in 0..65535, got {listen!r}")
    return host, int(port_text)


def _read_api_key(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read --api-key-file {str(path)!r}: {exc.strerror}") from None
    if not key:
        raise ValueError(f"--api-key-file {str(path)!r} is empty")
    return key
