"""Every option of ``conveyor executor``: its flag, $CONVEYOR_ variable, config-file key and default.

:class:`~conveyor.executor.worker.ExecutorConfig` takes its defaults from here
(:mod:`conveyor.settings` explains the mechanism).
"""

from __future__ import annotations

from conveyor.logs import LOG_OPTIONS
from conveyor.settings import Kind, Option, Options
from conveyor.tracing import TRACING_OPTIONS
from conveyor.transport import CLIENT_OPTIONS

_LLM = "LLM calls"
_MONITORING = "monitoring"

OPTIONS = (
    CLIENT_OPTIONS.only("coordinator")
    + Options(
        Option(
            "concurrency",
            Kind.INT,
            50,
            "tasks run at once; also the claim size",
            low=1,
            high=100_000,
        ),
        Option(
            "handlers",
            Kind.LIST,
            (),
            "modules defining @task_handler functions (repeatable flag; comma-separated variable)",
            metavar="MODULE",
            field=None,
        ),
        Option(
            "executor_id",
            Kind.TEXT,
            None,
            "stable id for this process",
            metavar="ID",
            default_text="host-pid-random",
        ),
        Option(
            "drain_timeout",
            Kind.FLOAT,
            300.0,
            "seconds a graceful stop may take; tasks still running then are abandoned",
            low=0,
        ),
        Option(
            "no_llm",
            Kind.BOOL,
            False,
            "do not run LLM steps (serve handler kinds only)",
            field=None,  # ExecutorConfig.serve_llm is its opposite
            group=_LLM,
        ),
        Option(
            "anthropic_base_url",
            Kind.TEXT,
            None,
            "Messages API base URL",
            metavar="URL",
            default_text="$ANTHROPIC_BASE_URL or the real API",
            field=None,
            group=_LLM,
        ),
        Option(
            "anthropic_api_key_file",
            Kind.PATH,
            None,
            "file holding the Anthropic API key",
            metavar="FILE",
            default_text="$ANTHROPIC_API_KEY",
            field=None,
            group=_LLM,
        ),
        Option(
            "llm_timeout",
            Kind.FLOAT,
            600.0,
            "seconds per LLM attempt unless the step sets one",
            field="default_timeout",
            low=0.001,
            high=7 * 86400,
            group=_LLM,
        ),
        Option(
            "httpx",
            Kind.BOOL,
            False,
            "use the SDK's default httpx transport instead of aiohttp",
            field=None,
            group=_LLM,
        ),
        Option(
            "no_pacing",
            Kind.BOOL,
            False,
            "do not pace LLM calls to the rate limits the API reports in its anthropic-ratelimit-* "
            "headers (a 429 still holds calls for its retry-after)",
            field=None,
            group=_LLM,
        ),
        Option(
            "metrics_port",
            Kind.INT,
            None,
            "serve Prometheus metrics at http://HOST:PORT/metrics (HOST: --monitoring-host; 0: any "
            "free port)",
            metavar="PORT",
            low=0,
            high=65535,
            default_text="off",
            field=None,
            group=_MONITORING,
        ),
        Option(
            "monitoring_host",
            Kind.TEXT,
            "127.0.0.1",
            "address the metrics listen on",
            metavar="HOST",
            field=None,
            group=_MONITORING,
        ),
        Option(
            "monitoring_token_file",
            Kind.PATH,
            None,
            "file holding the token the metrics ask for ('Authorization: Bearer TOKEN'); without it "
            "they ask for none, so they only listen on a loopback --monitoring-host unless given "
            "--insecure-monitoring",
            metavar="FILE",
            default_text="off",
            field=None,
            group=_MONITORING,
        ),
        Option(
            "insecure_monitoring",
            Kind.BOOL,
            False,
            "serve the metrics on a non-loopback --monitoring-host without --monitoring-token-file",
            field=None,
            group=_MONITORING,
        ),
    )
    + LOG_OPTIONS
    + TRACING_OPTIONS
    + CLIENT_OPTIONS.without("coordinator")
)
