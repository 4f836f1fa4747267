"""What a caller without credentials can make the coordinator (or an executor) hold.

Each of these grew without bound before (issue 10, item 4): concurrent Hellos all
passed the ``max_executors`` check before any was registered; a ClaimTasks stream
that never sent its Hello was kept forever; a Hello of millions of held task ids was
decoded into hundreds of MiB of Python objects; the status page cached every
distinct ``?rows=`` forever; and the metrics endpoint spent a thread per connection,
held for as long as the peer kept its socket open.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import grpc
import pytest

from conveyor import WorkflowContext, monitoring, workflow
from conveyor.coordinator import status_page
from conveyor.v1 import executor_service_pb2 as executor_pb
from conveyor.v1 import executor_service_pb2_grpc
from support import eventually, registry_of
from toolkit import MakeStack


@workflow
async def noop(ctx: WorkflowContext) -> Any:
    return None


REGISTRY = registry_of(noop)


def hello(executor_id: str, held: range = range(0)) -> executor_pb.ClaimTasksRequest:
    return executor_pb.ClaimTasksRequest(
        hello=executor_pb.Hello(
            executor_id=executor_id, task_kinds=["llm"], capacity=1, held_task_ids=list(held)
        )
    )


async def first_answer(call: Any) -> str:
    """``welcome``, or the status code name the stream ended with."""
    try:
        return str((await call.read()).WhichOneof("message"))
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)


async def test_concurrent_hellos_past_max_executors_are_refused(make_stack: MakeStack) -> None:
    """All Hellos are sent before any answer is read, so they race the limit check together."""
    limit, arriving = 5, 40
    stack = await make_stack(REGISTRY, max_executors=limit, max_streams_per_connection=arriving)
    channels = [grpc.aio.insecure_channel(stack.server.address) for _ in range(arriving)]
    try:
        calls = [executor_service_pb2_grpc.ExecutorServiceStub(channel).ClaimTasks() for channel in channels]
        await asyncio.gather(*(call.write(hello(f"racer-{i}")) for i, call in enumerate(calls)))
        answers = await asyncio.wait_for(asyncio.gather(*(first_answer(call) for call in calls)), 60)
        assert answers.count("welcome") == limit, str(sorted(set(answers)))
        assert answers.count("RESOURCE_EXHAUSTED") == arriving - limit, answers
        assert len(stack.coordinator.sessions) == limit
    finally:
        for channel in channels:
            await channel.close()


async def test_a_stream_that_never_says_hello_is_closed(make_stack: MakeStack) -> None:
    stack = await make_stack(REGISTRY, hello_timeout=1.0)
    async with grpc.aio.insecure_channel(stack.server.address) as channel:
        call = executor_service_pb2_grpc.ExecutorServiceStub(channel).ClaimTasks()
        # Generous: the point is that it ends at all (before, it never did).
        code = await asyncio.wait_for(call.code(), 60)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no Hello within 1s" in (await call.details())
    assert len(stack.coordinator.sessions) == 0


async def test_an_oversized_hello_is_refused_before_it_is_decoded(make_stack: MakeStack) -> None:
    stack = await make_stack(REGISTRY, max_stream_message_bytes=64 * 1024)
    async with grpc.aio.insecure_channel(stack.server.address) as channel:
        call = executor_service_pb2_grpc.ExecutorServiceStub(channel).ClaimTasks()
        await call.write(hello("hoarder", held=range(1, 100_001)))  # ~300 KB of varints
        assert await asyncio.wait_for(first_answer(call), 60) == "RESOURCE_EXHAUSTED"
        assert "max_stream_message_bytes" in (await call.details())
        # A Hello of normal size on a new stream is welcomed.
        call = executor_service_pb2_grpc.ExecutorServiceStub(channel).ClaimTasks()
        await call.write(hello("modest", held=range(1, 11)))
        assert await asyncio.wait_for(first_answer(call), 60) == "welcome"
        call.cancel()
    assert stack.coordinator.sessions.get("hoarder") is None


async def test_the_status_page_cache_stays_bounded(make_stack: MakeStack) -> None:
    stack = await make_stack(REGISTRY, http_port=0)
    base = f"http://127.0.0.1:{stack.server.http_port}"
    async with aiohttp.ClientSession() as session:
        for rows in range(1, 101):
            async with session.get(f"{base}/api/staircase?rows={rows}") as response:
                assert response.status == 200
        page = stack.server._status_page
        assert page is not None
        assert len(page._cache._values) <= status_page.MAX_CACHED


async def test_the_metrics_endpoint_bounds_and_times_out_idle_connections(
    make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitoring, "IDLE_TIMEOUT", 1.0)
    monkeypatch.setattr(monitoring, "MAX_CONNECTIONS", 8)
    stack = await make_stack(REGISTRY, metrics_port=0)
    port = stack.server.metrics_port
    # Half-open connections: connected, nothing ever sent.
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(monitoring.MAX_CONNECTIONS)]
    await eventually(lambda: stack.server._metrics.connections == monitoring.MAX_CONNECTIONS)
    # One more is turned away at once rather than queued or given a thread.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = await asyncio.wait_for(reader.read(), 30)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    writer.close()
    # Each idle connection is closed by the server (read() returns at end of stream).
    for reader, writer in idle:
        assert await asyncio.wait_for(reader.read(), 60) == b""
        writer.close()
    # And the endpoint serves again.
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert "conveyor_workflows_started_total" in await response.text()
