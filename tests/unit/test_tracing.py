"""conveyor.tracing on its own: which carriers are carried on, the stored form, the exporter
setting, and a coordinator that runs without OpenTelemetry installed at all."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conveyor import tracing
from conveyor.errors import ConfigurationError

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("fields", "carried"),
    [
        ({"traceparent": PARENT}, {"traceparent": PARENT}),
        ({"traceparent": PARENT, "tracestate": "a=1,b=2"}, {"traceparent": PARENT, "tracestate": "a=1,b=2"}),
        # A tracestate over the W3C limit (or not printable ASCII) is dropped, the traceparent kept.
        ({"traceparent": PARENT, "tracestate": "a=" + "x" * 600}, {"traceparent": PARENT}),
        ({"traceparent": PARENT, "tracestate": "a=\x01b"}, {"traceparent": PARENT}),
        ({"traceparent": PARENT.upper()}, {}),
        ({"traceparent": "00-abc-def-01"}, {}),
        ({"traceparent": "ff" + PARENT[2:]}, {}),  # version ff is forbidden
        ({"tracestate": "a=1"}, {}),
        ({"baggage": "k=v", "traceparent": PARENT}, {"traceparent": PARENT}),
        ({}, {}),
    ],
)
def test_only_a_well_formed_w3c_context_is_carried_on(
    fields: dict[str, str], carried: dict[str, str]
) -> None:
    assert tracing.valid_carrier(fields) == carried


def test_the_stored_form_reads_back_and_anything_else_reads_as_untraced() -> None:
    carrier = {"traceparent": PARENT, "tracestate": "a=1"}
    stored = tracing.encode(carrier)
    assert stored is not None and tracing.decode(stored) == carrier
    assert tracing.encode({}) is None
    for unreadable in (
        None,
        "",
        "not json",
        "[1]",
        '{"traceparent": 5}',
        '{"traceparent": "00-x"}',
        "[" * 100_000,
    ):
        assert tracing.decode(unreadable) == {}


def test_without_an_exporter_setting_no_provider_is_installed() -> None:
    assert tracing.configure(None, "conveyor-test") is False
    assert tracing.configure("", "conveyor-test") is False


def test_an_unknown_exporter_setting_says_what_is_accepted() -> None:
    with pytest.raises(ConfigurationError, match="--otel-exporter must be console, otlp or file:PATH"):
        tracing.configure("zipkin", "conveyor-test", "--otel-exporter")


def test_an_unwritable_trace_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot open the trace file"):
        tracing.configure(f"file:{tmp_path}/missing/spans.jsonl", "conveyor-test")


def test_the_executor_refuses_a_bad_exporter_setting_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "executor", "--coordinator", "127.0.0.1:1"],
        env={"PATH": "/usr/bin:/bin", tracing.EXPORTER_VARIABLE: "zipkin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "CONVEYOR_OTEL_EXPORTER must be console, otlp or file:PATH" in result.stderr


#: Runs in a fresh interpreter where ``import opentelemetry`` fails, as without the package.
_WITHOUT_OPENTELEMETRY = """
import asyncio, json, logging, sys
sys.modules["opentelemetry"] = None

from conveyor import logs, tracing
assert not tracing.available()
with tracing.span("anything", parent={"traceparent": PARENT}) as span:
    span.set_attribute("k", 1)
    span.fail("nothing records it")
    assert span.carrier() == {"traceparent": PARENT}
assert tracing.current_carrier() == {} and tracing.current_ids() is None
record = logging.LogRecord("x", logging.INFO, "here", 1, "plain", None, None)
assert "trace_id" not in json.loads(logs.JsonFormatter().format(record))

from conveyor.client.client import AsyncClient
from conveyor.coordinator.config import CoordinatorConfig
from conveyor.coordinator.server import CoordinatorServer
from conveyor.v1 import workflow_service_pb2
from conveyor.workflow import WorkflowContext, WorkflowRegistry, workflow

@workflow
async def idle(ctx: WorkflowContext) -> int:
    return 1

async def main() -> None:
    registry = WorkflowRegistry()
    registry.register(idle)
    server = CoordinatorServer(CoordinatorConfig(database_url=DATABASE_URL, listen="127.0.0.1:0"), registry)
    await server.start()
    try:
        async with AsyncClient(server.address) as client:
            request = workflow_service_pb2.StartWorkflowRequest(
                name="idle", trace_context={"traceparent": PARENT, "tracestate": "a=1"}
            )
            response = await client._workflows.StartWorkflow(request)
            untraced = await client.start_workflow("idle")
            print(json.dumps([response.workflow_id, untraced.workflow_id]))
    finally:
        await server.stop(grace=0.5)

asyncio.run(main())
assert "opentelemetry" not in [name.partition(".")[0] for name in sys.modules if sys.modules[name]]
"""


def test_without_opentelemetry_the_coordinator_stores_the_callers_context_as_it_came(tmp_path: Path) -> None:
    database = tmp_path / "c.db"
    script = f"PARENT = {PARENT!r}\nDATABASE_URL = 'sqlite:///{database}'\n" + textwrap.dedent(
        _WITHOUT_OPENTELEMETRY
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    traced_id, untraced_id = json.loads(result.stdout.strip().splitlines()[-1])
    with sqlite3.connect(database) as connection:
        stored = dict(connection.execute("SELECT id, trace_context FROM conveyor_workflows").fetchall())
    assert json.loads(stored[traced_id]) == {"traceparent": PARENT, "tracestate": "a=1"}
    assert stored[untraced_id] is None
