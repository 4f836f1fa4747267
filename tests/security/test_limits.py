"""Limits on what one caller can make the coordinator hold or store.

Every violation is answered INVALID_ARGUMENT or RESOURCE_EXHAUSTED, never a crash
or a stall, and changes nothing stored. (Payload sizes, batch sizes and name
lengths are covered with the other bad input in tests/core/test_bad_input.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from conveyor import WorkflowContext, workflow
from conveyor.client.client import AsyncClient
from conveyor.coordinator.validation import MAX_REASON_LENGTH
from conveyor.errors import InvalidArgument, RpcError
from conveyor.v1 import executor_service_pb2 as executor_pb
from conveyor.v1 import executor_service_pb2_grpc
from support import ManualExecutor, eventually, registry_of
from toolkit import MakeStack, snapshot, task_rows

MiB = 1024 * 1024


@workflow
async def waits(ctx: WorkflowContext, item: int) -> Any:
    return await ctx.task("nobody-serves-this", item)


REGISTRY = registry_of(waits)


async def settled_running_workflow(client: AsyncClient, database_url: str) -> str:
    started = await client.start_workflow("waits", {"item": 1})
    await eventually(lambda: task_rows(database_url, started.workflow_id))
    return started.workflow_id


async def test_a_message_over_the_size_limit_is_refused_whole(make_stack: MakeStack) -> None:
    stack = await make_stack(REGISTRY, max_message_bytes=1 * MiB)
    await settled_running_workflow(stack.client, stack.database_url)
    before = await snapshot(stack.database_url)
    with pytest.raises(RpcError) as refused:
        await stack.client.start_workflow("waits", {"item": 1, "padding": "x" * (2 * MiB)})
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in refused.value.message
    assert await snapshot(stack.database_url) == before


LONG_REASON = "r" * (MAX_REASON_LENGTH + 1)
REASONED_CALLS: dict[str, Callable[[AsyncClient, str], Awaitable[Any]]] = {
    "CancelWorkflow": lambda client, workflow_id: client.cancel_workflow(workflow_id, LONG_REASON),
    "FailPendingTasks": lambda client, _: client.fail_pending_tasks(None, reason=LONG_REASON),
    "ClearTaskQueue": lambda client, _: client.clear_task_queue(None, reason=LONG_REASON),
    "ClearReplayQueue": lambda client, _: client.clear_replay_queue(None, reason=LONG_REASON),
    "BumpEpoch": lambda client, _: client.bump_epoch(LONG_REASON),
}


@pytest.mark.parametrize("rpc", list(REASONED_CALLS))
async def test_a_reason_longer_than_the_limit_is_refused(make_stack: MakeStack, rpc: str) -> None:
    stack = await make_stack(REGISTRY)
    workflow_id = await settled_running_workflow(stack.client, stack.database_url)
    before = await snapshot(stack.database_url)
    with pytest.raises(InvalidArgument, match=f"reason is {MAX_REASON_LENGTH + 1} characters long"):
        await REASONED_CALLS[rpc](stack.client, workflow_id)
    assert await snapshot(stack.database_url) == before


def hello(executor_id: str) -> executor_pb.ClaimTasksRequest:
    return executor_pb.ClaimTasksRequest(
        hello=executor_pb.Hello(executor_id=executor_id, task_kinds=["llm"], capacity=1)
    )


async def test_one_connection_holds_at_most_its_share_of_claim_streams(make_stack: MakeStack) -> None:
    stack = await make_stack(REGISTRY, max_streams_per_connection=2)
    channel = grpc.aio.insecure_channel(stack.server.address)
    stub = executor_service_pb2_grpc.ExecutorServiceStub(channel)
    try:
        open_calls = []
        for index in range(2):
            call = stub.ClaimTasks()
            await call.write(hello(f"stream-{index}"))
            assert (await call.read()).WhichOneof("message") == "welcome"
            open_calls.append(call)
        # A third is refused before its Hello is even read.
        third = stub.ClaimTasks()
        assert await third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 ClaimTasks streams are already open on this connection" in (await third.details())
        # Closing one makes room again (as soon as the coordinator has seen it close).
        open_calls[0].cancel()
        await eventually(lambda: _welcomed(stub, "stream-3"))
    finally:
        await channel.close()


async def _welcomed(stub: executor_service_pb2_grpc.ExecutorServiceStub, executor_id: str) -> bool:
    """Whether a new stream of ``executor_id`` is welcomed."""
    call = stub.ClaimTasks()
    try:
        await call.write(hello(executor_id))
        return (await call.read()).WhichOneof("message") == "welcome"
    except grpc.aio.AioRpcError:
        return False
    finally:
        call.cancel()


async def test_executors_beyond_the_limit_are_refused(make_stack: MakeStack) -> None:
    stack = await make_stack(REGISTRY, max_executors=2)
    address = stack.server.address
    async with ManualExecutor(address, "first") as first, ManualExecutor(address, "second") as second:
        await first.connect()
        await second.connect()
        async with ManualExecutor(address, "third") as third:
            with pytest.raises(AssertionError, match="RESOURCE_EXHAUSTED"):
                await third.connect()
            assert "2 executors are connected" in (third.stream_error.details() or "")  # type: ignore[union-attr]
        # A connected executor reconnecting is not a newcomer.
        async with ManualExecutor(address, "second") as second_again:
            await second_again.connect()


async def test_a_hello_holding_more_tasks_than_a_statement_can_list_is_welcomed_at_once(
    make_stack: MakeStack,
) -> None:
    """Found by this suite: 70,000 held task ids made one SQL statement with 70,000 parameters,
    which PostgreSQL refuses; the writer then retried it for its whole retry deadline,
    holding up every other write."""
    stack = await make_stack(REGISTRY, database_retry_deadline=60.0)
    async with ManualExecutor(stack.server.address, "hoarder") as hoarder:
        welcome = await asyncio.wait_for(hoarder.connect(held_task_ids=range(1, 70_001)), 20)
    assert welcome.shard_count > 0
    # Other writes were not held up behind it.
    await asyncio.wait_for(stack.client.start_workflow("waits", {"item": 2}), 10)
