"""OpenTelemetry tracing: one trace from a client's StartWorkflow to every attempt of its steps.

The W3C Trace Context of the caller ("traceparent", "tracestate": a *carrier*) travels in
``StartWorkflowRequest.trace_context`` (and the call's gRPC metadata), is stored with the
workflow, and goes out again in every ``Task.trace_context``. Each process opens its spans
under it: the client's ``StartWorkflow``, the coordinator's ``StartWorkflow`` and one
``conveyor.replay`` per replay of the workflow code, and the executor's ``conveyor.task`` per
attempt, under which the anthropic SDK's own GenAI span of the API call nests. The
coordinator's writer opens one ``conveyor.commit`` per commit batch (a root span: a batch
holds the writes of many workflows).

Only the OpenTelemetry *API* is used, and it is optional (the ``[otel]`` extra; the anthropic
SDK depends on it too). Without it, or without a TracerProvider, every span is a no-op and
carriers pass through the coordinator unchanged. Conveyor installs a TracerProvider only
when asked: ``--otel-exporter`` / ``CONVEYOR_OTEL_EXPORTER`` (:data:`TRACING_OPTIONS`, :func:`configure`).
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConfigurationError, MissingExtra
from conveyor.settings import Kind, Option, Options

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # tracing is optional: everything below becomes a no-op
    otel_trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

#: A W3C Trace Context carrier: "traceparent" and, optionally, "tracestate".
Carrier = dict[str, str]

INSTRUMENTATION_SCOPE = "conveyor"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: version-traceid-parentid-flags, lower-case hex (https://www.w3.org/TR/trace-context/).
_TRACEPARENT_FORMAT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
#: The W3C limit: 32 list members of at most 256 characters make 512 characters of tracestate.
MAX_TRACESTATE_LENGTH = 512
#: ``CONVEYOR_OTEL_EXPORTER``: ``console``, ``otlp`` or ``file:PATH`` (JSON lines).
EXPORTER_VARIABLE = "CONVEYOR_OTEL_EXPORTER"

_provider: TracerProvider | None = None
#: OpenTelemetry installs the provider this variable names on first use.
_PROVIDER_FROM_ENVIRONMENT = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_cached_tracer: Any = None


def available() -> bool:
    """Whether the OpenTelemetry API is installed."""
    return otel_trace is not None


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Make Conveyor's spans go to ``provider`` instead of the global one (``None``: the global one
    again). For tests and embedders that keep their own provider; the anthropic SDK's spans
    still use the global provider."""
    global _provider, _cached_tracer
    _provider = provider
    _cached_tracer = None


def valid_carrier(fields: Mapping[str, str]) -> Carrier:
    """The W3C keys of ``fields`` worth carrying on: a well-formed traceparent, with its tracestate
    if that is within the W3C size limit; empty otherwise (W3C: a malformed one is ignored)."""
    parent = fields.get(TRACEPARENT, "").strip()
    if not _TRACEPARENT_FORMAT.fullmatch(parent) or parent.startswith("ff"):
        return {}
    carrier = {TRACEPARENT: parent}
    state = fields.get(TRACESTATE, "").strip()
    if state and len(state) <= MAX_TRACESTATE_LENGTH and state.isascii() and state.isprintable():
        carrier[TRACESTATE] = state
    return carrier


def encode(carrier: Mapping[str, str]) -> str | None:
    """The carrier as stored with a workflow (JSON), or None for an empty one."""
    return json.dumps(dict(carrier), sort_keys=True) if carrier else None


def decode(stored: str | None) -> Carrier:
    """The carrier stored by :func:`encode`; empty for None or anything unreadable."""
    if not stored:
        return {}
    try:
        value = json.loads(stored)
    except (ValueError, RecursionError):  # RecursionError: deeply nested text (an edited row)
        return {}
    if not isinstance(value, dict):
        return {}
    return valid_carrier({k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)})


def current_carrier() -> Carrier:
    """The W3C carrier of the current span; empty when there is none (or no OpenTelemetry)."""
    if otel_trace is None:
        return {}
    carrier: Carrier = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, for log lines; None without one."""
    if otel_trace is None:
        return None
    context = otel_trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


class SpanHandle:
    """A started span that is not (necessarily) the current one: a no-op without OpenTelemetry."""

    def __init__(self, span: Span | None, parent: Mapping[str, str]) -> None:
        self._span = span
        self._parent = dict(parent)

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        if self._span is not None:
            self._span.set_attribute(key, value)

    def carrier(self) -> Carrier:
        """The carrier to hand on: this span's, or the parent's when there is no span at all (no
        OpenTelemetry, or no provider), so that a coordinator without tracing still passes the
        client's trace on. A span that is not sampled hands on its own context, unsampled."""
        if otel_trace is None or self._span is None or not self._span.get_span_context().is_valid:
            return dict(self._parent)
        carrier: Carrier = {}
        TraceContextTextMapPropagator().inject(carrier, otel_trace.set_span_in_context(self._span))
        return carrier or dict(self._parent)

    def fail(self, description: str) -> None:
        """Mark the span as failed (an attempt that failed, a batch that did not commit)."""
        if self._span is not None and otel_trace is not None:
            self._span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, description[:500]))

    def end(self) -> None:
        if self._span is not None:
            self._span.end()


#: The span of an untraced call without a provider: records nothing, hands nothing on.
_UNTRACED = SpanHandle(None, {})


def start_span(
    name: str,
    *,
    parent: Mapping[str, str] | None = None,
    kind: str = "internal",
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> SpanHandle:
    """Start a span under ``parent`` (a carrier; None: the current span). Not made current."""
    if parent is not None and not parent and not _provider_installed():
        # Without a provider a span under no parent is the invalid no-op span: nothing is recorded,
        # handed on or logged. Skipping OpenTelemetry's machinery for it matters: the writer opens
        # one per commit and the replay runner one per replay of an untraced workflow.
        return _UNTRACED
    carrier = valid_carrier(parent) if parent is not None else {}
    if otel_trace is None:
        return SpanHandle(None, carrier)
    context = TraceContextTextMapPropagator().extract(carrier) if parent is not None else None
    span = _tracer().start_span(name, context=context, kind=_KINDS[kind], attributes=dict(attributes or {}))
    return SpanHandle(span, carrier)


@contextmanager
def span(
    name: str,
    *,
    parent: Mapping[str, str] | None = None,
    kind: str = "internal",
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[SpanHandle]:
    """A span under ``parent`` (a carrier; None: the current span), current while the block runs:
    spans opened inside it (the anthropic SDK's) and log lines written in it belong to it.
    An exception escaping the block is recorded on it."""
    handle = start_span(name, parent=parent, kind=kind, attributes=attributes)
    if otel_trace is None or handle._span is None:
        yield handle
        return
    token = otel_context.attach(otel_trace.set_span_in_context(handle._span))
    try:
        yield handle
    except BaseException as error:
        handle._span.record_exception(error)
        handle.fail(f"{type(error).__name__}: {error}")
        raise
    finally:
        otel_context.detach(token)
        handle.end()


def _provider_installed() -> bool:
    """Whether spans may go anywhere: a provider given to :func:`use_tracer_provider`, a global one
    set, or one named by ``OTEL_PYTHON_TRACER_PROVIDER`` (OpenTelemetry's default is a proxy that
    records nothing until one is). Read from OpenTelemetry's module state, which costs nothing; if
    a release renames it, every span takes the full path again."""
    if otel_trace is None:
        return False
    return (
        _provider is not None
        or getattr(otel_trace, "_TRACER_PROVIDER", True) is not None
        or _PROVIDER_FROM_ENVIRONMENT
    )


def _tracer() -> Any:
    """Conveyor's tracer, made once per provider: the writer opens a span for every commit. Under the
    global provider it is a proxy that follows a provider installed later."""
    global _cached_tracer
    assert otel_trace is not None
    if _cached_tracer is None:
        from conveyor import __version__

        _cached_tracer = otel_trace.get_tracer(INSTRUMENTATION_SCOPE, __version__, tracer_provider=_provider)
    return _cached_tracer


if otel_trace is not None:
    _KINDS = {
        "internal": otel_trace.SpanKind.INTERNAL,
        "client": otel_trace.SpanKind.CLIENT,
        "server": otel_trace.SpanKind.SERVER,
        "consumer": otel_trace.SpanKind.CONSUMER,
    }


#: ``--otel-exporter`` of the coordinator and executor (:mod:`conveyor.settings`).
TRACING_OPTIONS = Options(
    Option(
        "otel_exporter",
        Kind.TEXT,
        None,
        "export Conveyor's spans: console (stderr), otlp (the OTLP exporter's OTEL_EXPORTER_OTLP_* "
        "settings) or file:PATH (JSON lines); unset, none is installed and an application's own "
        "OpenTelemetry setup gets the spans",
        field=None,
        metavar="EXPORTER",
        default_text="none",
        group="tracing",
    ),
)


def configure(choice: str | None, service_name: str, setting: str = EXPORTER_VARIABLE) -> bool:
    """Install a global TracerProvider exporting Conveyor's spans if ``choice`` (the
    ``otel_exporter`` option) asks for one: ``console`` (stderr), ``otlp`` (the OTLP exporter's
    own ``OTEL_EXPORTER_OTLP_*`` settings) or ``file:PATH`` (one JSON object per span,
    appended). Returns whether it did. ``setting`` names where ``choice`` came from, for messages.

    Unset, nothing is installed: an application that sets up OpenTelemetry itself keeps its own
    provider, and Conveyor's spans go wherever that one sends them.
    """
    choice = (choice or "").strip()
    if not choice:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
            SpanExporter,
        )
    except ImportError as error:
        raise MissingExtra(f"{setting}={choice}", "otel", error.name) from None
    exporter: SpanExporter
    if choice == "console":
        exporter, simple = ConsoleSpanExporter(), False
    elif choice == "otlp":
        try:  # not a dependency of the [otel] extra: imported by name
            otlp = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
        except ImportError:
            raise ConfigurationError(
                f"{setting}=otlp needs the OTLP exporter: pip install opentelemetry-exporter-otlp-proto-grpc"
            ) from None
        exporter, simple = otlp.OTLPSpanExporter(), False
    elif choice.startswith("file:") and len(choice) > len("file:"):
        from conveyor.tracing_file import JsonLinesExporter

        path = choice.removeprefix("file:")
        try:
            exporter, simple = JsonLinesExporter(path), True
        except OSError as error:
            raise ConfigurationError(
                f"{setting}: cannot open the trace file {path} ({error.strerror}); give a writable path"
            ) from None
    else:
        raise ConfigurationError(
            f"{setting} must be console, otlp or file:PATH, not {choice!r}; unset it to export nothing"
        )
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    # A file is cheap to write at once, and nothing is lost if the process is killed.
    provider.add_span_processor(SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter))
    otel_trace.set_tracer_provider(provider)
    return True
