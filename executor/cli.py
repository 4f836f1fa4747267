"""``conveyor executor``: run an executor."""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import sys

from conveyor import logs, monitoring, tracing, transport
from conveyor.errors import ConfigurationError
from conveyor.settings import PRECEDENCE, Resolved
from conveyor.tasks import HandlerRegistry

from .options import OPTIONS

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
  CONVEYOR_COORDINATOR=coord:50051 CONVEYOR_CONCURRENCY=50 conveyor executor --config executor.toml
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = PRECEDENCE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    OPTIONS.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        resolved = OPTIONS.resolve(args)
        logs.configure(resolved["log_level"], resolved["log_format"])
        tracing.configure(resolved["otel_exporter"], "conveyor-executor", resolved.sources["otel_exporter"])
        return asyncio.run(_run(resolved))
    except (ConfigurationError, ValueError) as error:
        print(f"conveyor executor: {error}", file=sys.stderr)
        return 2


async def _run(resolved: Resolved) -> int:
    # Imported here: the anthropic SDK alone takes most of a second to import.
    from .llm import LlmCaller
    from .pacing import RateLimitPacer
    from .worker import Executor, ExecutorConfig, default_executor_id

    args = resolved.namespace()
    fields = resolved.fields(OPTIONS)
    config = ExecutorConfig(
        **{**fields, "executor_id": fields["executor_id"] or default_executor_id()},
        serve_llm=not args.no_llm,
        security=transport.security_from_values(resolved),
    )
    handlers = HandlerRegistry.from_modules(list(args.handlers))
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
