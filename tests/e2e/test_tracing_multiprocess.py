"""One trace across real processes: client → coordinator → executor → the anthropic SDK's span.

The coordinator and the executor run as separate ``conveyor`` processes (bench.cluster) with
``CONVEYOR_OTEL_EXPORTER=file:PATH``: each installs its own TracerProvider and appends its spans
to the file as JSON lines (conveyor.tracing_file). The client runs here, its spans in memory.
Nothing is shared between the processes but the W3C trace context on the wire and in the database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench.cluster import ClusterSpec, LocalCluster
from conveyor import tracing
from conveyor.client.client import AsyncClient
from conveyor.client.models import WorkflowStatus
from support import eventually

pytestmark = pytest.mark.slow


def _hex(value: str | None) -> str | None:
    return value.removeprefix("0x") if value else None


async def test_a_workflows_spans_in_three_processes_form_one_trace(database_url: str, tmp_path: Path) -> None:
    span_file = tmp_path / "spans.jsonl"
    spec = ClusterSpec(
        database_url=database_url,
        workdir=tmp_path,
        executors=1,
        simulator_args=("--latency", "fixed:0.001"),
        env={"CONVEYOR_OTEL_EXPORTER": f"file:{span_file}"},
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    cluster = LocalCluster(spec)
    try:
        with cluster:
            async with AsyncClient(cluster.coordinator_address, timeout=30) as client:
                with provider.get_tracer("test").start_as_current_span("application request"):
                    started = await client.start_workflow("research", {"topic": "tides"})
                finished = await eventually(
                    lambda: _finished(client, started.workflow_id), timeout=120, interval=0.2
                )
            codes = cluster.stop()  # the processes flush and close their exporters on the way out
    except AssertionError as error:
        raise AssertionError(f"{error}\n{cluster.log_tails()}") from None
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()
    assert finished.status == WorkflowStatus.COMPLETED
    assert codes["coordinator"] == 0 and codes["executor-1"] == 0

    (client_span,) = [s for s in exporter.get_finished_spans() if s.name == "StartWorkflow"]
    trace_id = f"{client_span.context.trace_id:032x}"
    remote = [json.loads(line) for line in span_file.read_text().splitlines()]
    in_trace = [s for s in remote if _hex(s["context"]["trace_id"]) == trace_id]

    def service(span: dict[str, Any]) -> str:
        return str(span["resource"]["attributes"]["service.name"])

    (server_span,) = [s for s in in_trace if s["name"] == "StartWorkflow"]
    assert service(server_span) == "conveyor-coordinator"
    assert _hex(server_span["parent_id"]) == f"{client_span.context.span_id:016x}"
    server_id = _hex(server_span["context"]["span_id"])

    replays = [s for s in in_trace if s["name"] == "conveyor.replay"]
    attempts = [s for s in in_trace if s["name"] == "conveyor.task"]
    # research: extract, analyze_a and analyze_b in parallel, summarize; replays after each stage.
    assert sorted(s["attributes"]["conveyor.step.name"] for s in attempts) == [
        "analyze_a",
        "analyze_b",
        "extract",
        "summarize",
    ]
    assert len(replays) >= 4
    assert {service(s) for s in attempts} == {"conveyor-executor"}
    assert {service(s) for s in replays} == {"conveyor-coordinator"}
    assert {_hex(s["parent_id"]) for s in [*replays, *attempts]} == {server_id}

    # The anthropic SDK's own span of each API call nests under the attempt that made it.
    sdk_calls = [s for s in in_trace if s["attributes"].get("gen_ai.provider.name") == "anthropic"]
    attempt_ids = {_hex(s["context"]["span_id"]) for s in attempts}
    assert len(sdk_calls) == 4
    assert {_hex(s["parent_id"]) for s in sdk_calls} == attempt_ids


async def _finished(client: AsyncClient, workflow_id: str) -> Any:
    workflow = await client.get_workflow(workflow_id)
    return workflow if workflow.status != WorkflowStatus.RUNNING else None
