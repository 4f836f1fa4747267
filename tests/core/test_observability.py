"""What operators' ordinary tools see: Prometheus metrics, gRPC health and reflection, structured logs.

Metrics are scraped over HTTP from the real endpoints and parsed with
prometheus_client's own parser; health and reflection are asked through the
stock grpc_health / grpc_reflection clients, as grpcurl would, without our protos.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from conveyor import RetryPolicy, WorkflowContext, logs, task_handler, workflow
from conveyor.coordinator.server import SERVICE_NAMES
from conveyor.monitoring import serve_metrics
from support import eventually, registry_of
from toolkit import MakeStack, handlers_of, wait_finished

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.05, multiplier=1.0, max_backoff=0.05)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@workflow
async def ask_then_crunch(ctx: WorkflowContext, item: int) -> Any:
    reply = await ctx.llm(model="sim", max_tokens=8, messages=[{"role": "user", "content": f"#{item}"}])
    return [reply.text, await ctx.task("flaky", item, name="crunch", retry=FAST_RETRY)]


@workflow
async def parked(ctx: WorkflowContext, item: int) -> Any:
    return await ctx.task("unserved", item)


WORKFLOWS = registry_of(ask_then_crunch, parked)
_failed_once: set[int] = set()


@task_handler("flaky")
def flaky(item: int) -> int:
    """Fails each item's first attempt (a transient error), then succeeds."""
    if item not in _failed_once:
        _failed_once.add(item)
        raise RuntimeError(f"transient trouble with #{item}")
    return item * 10


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(autouse=True)
def fresh_flaky_handler() -> Iterator[None]:
    _failed_once.clear()
    yield
    _failed_once.clear()


async def test_coordinator_and_executor_metrics_count_what_happened(
    make_stack: MakeStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor.executor.worker")
    stack = await make_stack(WORKFLOWS, shards=4, metrics_port=0, gauge_refresh_interval=0.1)
    await stack.start_simulator()
    executor = stack.start_executor(handlers=handlers_of(flaky), concurrency=10)
    executor_metrics = await serve_metrics(executor.metrics.registry, "127.0.0.1", 0)
    executor_port = executor_metrics.port
    try:
        started = await stack.client.start_workflows([("ask_then_crunch", {"item": i}) for i in range(3)])
        for index, start in enumerate(started):
            assert (await wait_finished(stack.client, start.workflow_id)).result[1] == index * 10
        await stack.client.start_workflows([("parked", {"item": i}) for i in range(2)])
        assert stack.server is not None and stack.server.metrics_port is not None
        port = stack.server.metrics_port

        async def gauges_caught_up() -> Samples | None:
            samples = await asyncio.to_thread(scrape, port)
            queued = sum(
                v
                for (n, labels), v in samples.items()
                if n == "conveyor_queue_tasks" and ("state", "queued") in labels
            )
            done = value(samples, "conveyor_workflows", status="completed") == 3
            return samples if queued == 2 and done else None

        coordinator = await eventually(gauges_caught_up)
        executor_samples = await asyncio.to_thread(scrape, executor_port)
    finally:
        await executor_metrics.stop()

    assert value(coordinator, "conveyor_workflows_started_total") == 5
    assert value(coordinator, "conveyor_workflows_finished_total", status="completed") == 3
    assert value(coordinator, "conveyor_results_total", disposition="accepted") == 9
    assert value(coordinator, "conveyor_task_attempts_total", task_kind="llm", outcome="success") == 3
    assert value(coordinator, "conveyor_task_attempts_total", task_kind="flaky", outcome="retryable") == 3
    assert value(coordinator, "conveyor_task_attempts_total", task_kind="flaky", outcome="success") == 3
    assert value(coordinator, "conveyor_task_retries_total", error_class="retryable") == 3
    assert value(coordinator, "conveyor_step_queue_wait_seconds_count", task_kind="flaky") == 6
    assert value(coordinator, "conveyor_step_execution_seconds_count", task_kind="llm") == 3
    # Each finished workflow was replayed three times: at its start and after each step.
    assert value(coordinator, "conveyor_step_transition_gap_seconds_count") >= 9
    assert value(coordinator, "conveyor_workflows", status="running") == 2
    assert value(coordinator, "conveyor_executors", state="live") == 1
    assert value(coordinator, "conveyor_executor_slots", use="capacity") == 10
    assert value(coordinator, "conveyor_replay_queue_depth") == 0
    assert {labels for (name, labels) in coordinator if name == "conveyor_queue_oldest_age_seconds"} == {
        frozenset({("shard", str(shard))}) for shard in range(4)
    }

    assert (
        value(executor_samples, "conveyor_executor_task_seconds_count", task_kind="llm", outcome="success")
        == 3
    )
    assert (
        value(
            executor_samples, "conveyor_executor_task_seconds_count", task_kind="flaky", outcome="retryable"
        )
        == 3
    )
    assert value(executor_samples, "conveyor_executor_slots", use="capacity") == 10
    assert value(executor_samples, "conveyor_executor_results_reported_total") == 9
    assert value(executor_samples, "conveyor_executor_draining") == 0

    # The executor logged each failed attempt with the ids of its workflow and step, as fields.
    failures = [
        r for r in caplog.records if r.getMessage().endswith("RuntimeError: transient trouble with #0")
    ]
    assert len(failures) == 1
    entry = json.loads(logs.JsonFormatter().format(failures[0]))
    assert entry["workflow_id"] == started[0].workflow_id
    assert (entry["step_number"], entry["step_name"], entry["attempt"], entry["level"]) == (
        1,
        "crunch",
        1,
        "info",
    )
    assert "task_id" in entry and "shard" in entry


async def test_grpc_health_and_reflection_answer_without_the_protos(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    address = stack.server.address

    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answers = {
            name: (await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)).status
            for name in ("", *SERVICE_NAMES)
        }
    assert answers == dict.fromkeys(("", *SERVICE_NAMES), health_pb2.HealthCheckResponse.SERVING)

    def reflect() -> tuple[list[str], list[str]]:
        with grpc.insecure_channel(address) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = list(database.get_services())
            file = database.FindFileContainingSymbol("conveyor.v1.WorkflowService")
            (service,) = [s for s in file.service if s.name == "WorkflowService"]
            return services, [method.name for method in service.method]

    services, methods = await asyncio.to_thread(reflect)
    assert set(SERVICE_NAMES) | {"grpc.health.v1.Health"} <= set(services)
    assert "ExplainWorkflow" in methods


def test_json_logs_carry_the_ids_as_fields_and_text_logs_stay_plain() -> None:
    record = logging.LogRecord(
        "conveyor.coordinator.engine", logging.WARNING, __file__, 1, "workflow %s failed", ("w1",), None
    )
    for name, field_value in logs.fields(workflow_id="w1", step_number=2, executor_id=None).items():
        setattr(record, name, field_value)

    entry = json.loads(logs.JsonFormatter().format(record))

    assert entry["message"] == "workflow w1 failed"
    assert (entry["level"], entry["logger"], entry["workflow_id"], entry["step_number"]) == (
        "warning",
        "conveyor.coordinator.engine",
        "w1",
        2,
    )
    assert "executor_id" not in entry
    with pytest.raises(ValueError, match="unknown log fields"):
        logs.fields(workflow=1)
