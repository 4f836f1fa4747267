"""OpenTelemetry, in-process on both databases: the client's trace reaches every replay and attempt.

Conveyor's spans go to an in-memory exporter through ``tracing.use_tracer_provider`` (no global
provider is installed, so other tests are unaffected). The trace context still crosses real
gRPC calls and a real database row: the coordinator's span takes its parent from the request,
and the executor's from the Task message, never from the in-process context.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conveyor import WorkflowContext, logs, tracing, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.client.sync import Client
from conveyor.tasks import HandlerRegistry
from conveyor.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from conveyor.workflow import RetryPolicy
from support import eventually, registry_of

CLIENT_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@workflow
async def traced(ctx: WorkflowContext, topic: str) -> str:
    answer = await ctx.llm(
        model="sim", max_tokens=50, name="ask", messages=[{"role": "user", "content": f"about {topic}"}]
    )
    checked = await ctx.task(
        "check", answer.text, name="check", retry=RetryPolicy(max_attempts=2, initial_backoff=0.01)
    )
    return str(checked)


_FAILED_ONCE: set[str] = set()


def check(payload: str) -> str:
    logging.getLogger("test.handler").info("checking %s", payload)
    if payload not in _FAILED_ONCE:  # the first attempt fails: two attempt spans for one step
        _FAILED_ONCE.add(payload)
        raise RuntimeError("flaky check")
    return payload.upper()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


def _named(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def _start_stack(make_stack: Any) -> Any:
    _FAILED_ONCE.clear()
    stack = await make_stack(registry_of(traced))
    await stack.start_simulator()
    stack.start_executor(handlers=HandlerRegistry({"check": check}))
    return stack


async def test_one_trace_from_the_clients_span_to_every_replay_and_attempt(
    make_stack: Any, spans: InMemorySpanExporter
) -> None:
    stack = await _start_stack(make_stack)
    app_tracer = tracing._tracer()
    with app_tracer.start_as_current_span("application request") as app:
        started = await stack.client.start_workflow("traced", {"topic": "tides"})
    finished_workflow = await stack.client.wait(started.workflow_id, timeout=30)
    assert finished_workflow.status == WorkflowStatus.COMPLETED

    def all_ended() -> tuple[ReadableSpan, ...] | None:
        # The last replay (the one that completes the workflow) ends right after its write.
        finished = spans.get_finished_spans()
        replays = [s for s in _named(finished, "conveyor.replay") if s.attributes is not None]
        done = any(s.attributes.get("conveyor.workflow.status") == "completed" for s in replays)  # type: ignore[union-attr]
        return finished if done else None

    finished = await eventually(all_ended)
    trace_id = app.get_span_context().trace_id

    (client_span,) = [s for s in _named(finished, "StartWorkflow") if s.kind is SpanKind.CLIENT]
    (server_span,) = [s for s in _named(finished, "StartWorkflow") if s.kind is SpanKind.SERVER]
    assert _parent_id(client_span) == app.get_span_context().span_id
    assert _parent_id(server_span) == client_span.context.span_id
    assert server_span.attributes is not None
    assert server_span.attributes["conveyor.workflow.id"] == started.workflow_id

    replays = _named(finished, "conveyor.replay")
    attempts = _named(finished, "conveyor.task")
    # Three replays (start, after "ask", after "check"); "ask" once, "check" twice (one retry).
    assert len(replays) == 3
    assert sorted((a.attributes or {}).get("conveyor.step.name", "") for a in attempts) == [
        "ask",
        "check",
        "check",
    ]
    for span in [*replays, *attempts]:
        assert span.context.trace_id == trace_id
        assert _parent_id(span) == server_span.context.span_id
        assert (span.attributes or {})["conveyor.workflow.id"] == started.workflow_id
    failed = [a for a in attempts if a.status.status_code is StatusCode.ERROR]
    assert [(a.attributes or {}).get("conveyor.task.attempt") for a in failed] == [1]
    assert "flaky check" in (failed[0].status.description or "")

    # The writer's commit batches are root spans of their own traces.
    commits = _named(finished, "conveyor.commit")
    assert commits and all(c.parent is None and c.context.trace_id != trace_id for c in commits)


async def test_a_trace_context_in_the_metadata_alone_is_followed(
    make_stack: Any, spans: InMemorySpanExporter
) -> None:
    """A client other than ours (or a gRPC instrumentation) sends only the metadata."""
    stack = await _start_stack(make_stack)
    async with grpc.aio.insecure_channel(stack.server.address) as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        response = await stub.StartWorkflow(
            workflow_service_pb2.StartWorkflowRequest(name="traced", args_json='{"topic": "a"}'),
            metadata=(("traceparent", CLIENT_TRACEPARENT), ("tracestate", "vendor=1")),
        )
    await stack.client.wait(response.workflow_id, timeout=30)

    def attempts() -> list[ReadableSpan]:
        return [s for s in _named(spans.get_finished_spans(), "conveyor.task")]

    (ask, *_checks) = await eventually(lambda: len(attempts()) == 3 and attempts())
    (server_span,) = _named(spans.get_finished_spans(), "StartWorkflow")
    assert f"{server_span.context.trace_id:032x}" == CLIENT_TRACEPARENT.split("-")[1]
    assert f"{_parent_id(server_span):016x}" == CLIENT_TRACEPARENT.split("-")[2]
    assert server_span.context.trace_state.get("vendor") == "1"
    assert _parent_id(ask) == server_span.context.span_id


async def test_a_malformed_trace_context_is_ignored_and_the_workflow_runs(
    make_stack: Any, spans: InMemorySpanExporter
) -> None:
    stack = await _start_stack(make_stack)
    async with grpc.aio.insecure_channel(stack.server.address) as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        response = await stub.StartWorkflow(
            workflow_service_pb2.StartWorkflowRequest(
                name="traced",
                args_json='{"topic": "b"}',
                trace_context={"traceparent": "00-not-a-trace-01", "tracestate": "x" * 5000},
            )
        )
    workflow_done = await stack.client.wait(response.workflow_id, timeout=30)
    assert workflow_done.status == WorkflowStatus.COMPLETED
    (server_span,) = _named(spans.get_finished_spans(), "StartWorkflow")
    assert server_span.parent is None  # a new trace, as the W3C recommendation says


async def test_json_log_lines_written_in_a_span_carry_its_ids(
    make_stack: Any, spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = await _start_stack(make_stack)
    handler = logging.StreamHandler()
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("test.handler")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        started = await stack.client.start_workflow("traced", {"topic": "logs"})
        await stack.client.wait(started.workflow_id, timeout=30)
        logger.info("outside any span")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    inside = [line for line in lines if line["message"].startswith("checking")]
    (outside,) = [line for line in lines if line["message"] == "outside any span"]
    attempts = {
        (f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}")
        for s in _named(spans.get_finished_spans(), "conveyor.task")
    }
    assert len(inside) == 2
    assert {(line["trace_id"], line["span_id"]) for line in inside} <= attempts
    assert "trace_id" not in outside and "span_id" not in outside


async def test_the_blocking_client_sends_the_current_trace_too(
    make_stack: Any, spans: InMemorySpanExporter
) -> None:
    stack = await _start_stack(make_stack)

    def start_from_blocking_code() -> tuple[str, int]:
        with (
            Client(stack.server.address) as client,
            tracing._tracer().start_as_current_span("blocking caller") as caller,
        ):
            started = client.start_workflow("traced", {"topic": "sync"})
        return started.workflow_id, caller.get_span_context().span_id

    workflow_id, caller_id = await asyncio.to_thread(start_from_blocking_code)
    await stack.client.wait(workflow_id, timeout=30)
    finished = spans.get_finished_spans()
    (client_span,) = [s for s in _named(finished, "StartWorkflow") if s.kind is SpanKind.CLIENT]
    (server_span,) = [s for s in _named(finished, "StartWorkflow") if s.kind is SpanKind.SERVER]
    assert _parent_id(client_span) == caller_id
    assert _parent_id(server_span) == client_span.context.span_id
