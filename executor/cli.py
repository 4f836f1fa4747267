"""``conveyor executor``: run an executor."""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import sys
from pathlib import Path

from conveyor import logs, monitoring, tracing, transport
from conveyor.errors import ConfigurationError
from conveyor.tasks import HandlerRegistry

DESCRIPTION = """\
Run an executor: it leases shards from the coordinator, runs up to --concurrency
tasks at once (LLM calls through the anthropic SDK, and task handlers), and reports
results in batches. SIGTERM/SIGINT drain it: running tasks finish and are reported,
then it exits 0.

The Anthropic API key and base URL come from ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL,
or from --anthropic-api-key-file / --anthropic-base-url.
The coordinator's bearer token (if it requires one) comes from --token-file,
$CONVEYOR_TOKEN_FILE or $CONVEYOR_TOKEN; --tls / --tls-ca enable TLS.

example:
  conveyor executor --coordinator 127.0.0.1:50051 --concurrency 50 --handlers my_app.handlers
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--coordinator",
        default="127.0.0.1:50051",
        metavar="HOST:PORT",
        help="coordinator address (default %(default)s)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=50, help="tasks run at once; also the claim size (default 50)"
    )
    parser.add_argument(
        "--handlers",
        action="append",
        default=[],
        metavar="MODULE",
        help="module defining @task_handler functions (repeatable)",
    )
    parser.add_argument(
        "--no-llm", action="store_true", help="do not run LLM steps (serve handler kinds only)"
    )
    parser.add_argument(
        "--executor-id", default=None, help="stable id for this process (default host-pid-random)"
    )
    parser.add_argument(
        "--anthropic-base-url",
        default=None,
        help="Messages API base URL (default $ANTHROPIC_BASE_URL or the real API)",
    )
    parser.add_argument(
        "--anthropic-api-key-file",
        type=Path,
        default=None,
        help="file holding the API key (default $ANTHROPIC_API_KEY)",
    )
    parser.add_argument(
        "--llm-timeout",
        type=float,
        default=600.0,
        help="seconds per LLM attempt unless the step sets one (default 600)",
    )
    parser.add_argument(
        "--httpx", action="store_true", help="use the SDK's default httpx transport instead of aiohttp"
    )
    parser.add_argument(
        "--no-pacing",
        action="store_true",
        help="do not pace LLM calls to the rate limits the API reports in its anthropic-ratelimit-* "
        "headers (a 429 still holds calls for its retry-after)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="seconds a graceful stop may take (default 300)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST: --monitoring-host)",
    )
    parser.add_argument(
        "--monitoring-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics listen on (default %(default)s)",
    )
    parser.add_argument(
        "--monitoring-token-file",
        type=Path,
        metavar="FILE",
        help="file holding the token the metrics ask for ('Authorization: Bearer TOKEN'); without it "
        "they ask for none, so they only listen on a loopback --monitoring-host unless given "
        "--insecure-monitoring",
    )
    parser.add_argument(
        "--insecure-monitoring",
        action="store_true",
        help="serve the metrics on a non-loopback --monitoring-host without --monitoring-token-file",
    )
    logs.add_arguments(parser)
    transport.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format)
    try:
        tracing.configure_from_environment("conveyor-executor")
        return asyncio.run(_run(args))
    except (ConfigurationError, ValueError) as error:
        print(f"conveyor executor: {error}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace) -> int:
    # Imported here: the anthropic SDK alone takes most of a second to import.
    from .llm import LlmCaller
    from .pacing import RateLimitPacer
    from .worker import Executor, ExecutorConfig, default_executor_id

    config = ExecutorConfig(
        coordinator=args.coordinator,
        concurrency=args.concurrency,
        executor_id=args.executor_id or default_executor_id(),
        serve_llm=not args.no_llm,
        default_timeout=args.llm_timeout,
        drain_timeout=args.drain_timeout,
        security=transport.security_from_arguments(args),
    )
    handlers = HandlerRegistry.from_modules(args.handlers)
    llm = None
    if config.serve_llm:
        api_key = args.anthropic_api_key_file.read_text().strip() if args.anthropic_api_key_file else None
        if not (api_key or os.environ.get("ANTHROPIC_API_KEY")):
            raise ConfigurationError(
                "no Anthropic API key: set ANTHROPIC_API_KEY or pass --anthropic-api-key-file "
                "(any value works against the simulator)"
            )
        llm = LlmCaller(
            base_url=args.anthropic_base_url,
            api_key=api_key,
            timeout=args.llm_timeout,
            use_aiohttp=not args.httpx,
            pacer=RateLimitPacer(follow_headers=not args.no_pacing),
        )
    authorize = metrics_authorization(args)
    executor = Executor(config, handlers, llm)
    executor.install_signal_handlers()
    if args.metrics_port is None:
        return await executor.run()
    metrics = await monitoring.serve_metrics(
        executor.metrics.registry, args.monitoring_host, args.metrics_port, authorize
    )
    print(f"metrics at http://{args.monitoring_host}:{metrics.port}/metrics", flush=True)
    try:
        return await executor.run()
    finally:
        await metrics.stop()


def metrics_authorization(args: argparse.Namespace) -> monitoring.Authorize | None:
    """Who may read the metrics: the holder of --monitoring-token-file's token, or (None) anyone."""
    if args.monitoring_token_file is None:
        if args.metrics_port is not None:
            monitoring.check_exposure(
                args.monitoring_host,
                authenticated=False,
                insecure=args.insecure_monitoring,
                what="the executor's metrics",
                fix="Give --monitoring-token-file FILE",
            )
        return None
    expected = monitoring.read_token_file(args.monitoring_token_file, "--monitoring-token-file").encode()
    return lambda token: hmac.compare_digest(token.encode(), expected)
