"""The gRPC health service says NOT_SERVING when the coordinator can no longer make progress:
its writer thread died (every write would hang) or a background loop ended."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import Connection

from conveyor import WorkflowContext, workflow
from support import Stack, eventually, registry_of
from toolkit import MakeStack


@workflow
async def hello(ctx: WorkflowContext, n: int) -> int:
    return n


async def health_status(stack: Stack) -> int:
    assert stack.server is not None
    async with grpc.aio.insecure_channel(stack.server.address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        return int(answer.status)


async def test_health_turns_not_serving_when_a_background_loop_ends(make_stack: MakeStack) -> None:
    stack = await make_stack(registry_of(hello))
    assert await health_status(stack) == health_pb2.HealthCheckResponse.SERVING
    assert stack.coordinator.healthy() == (True, "serving")
    [replay_loop] = [task for task in stack.coordinator._loops if task.get_name() == "_replay_loop"]
    replay_loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await replay_loop
    healthy, reason = stack.coordinator.healthy()
    assert not healthy and "_replay_loop" in reason
    await eventually(lambda: _is(stack, health_pb2.HealthCheckResponse.NOT_SERVING), timeout=20)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_health_turns_not_serving_when_the_writer_thread_dies(make_stack: MakeStack) -> None:
    stack = await make_stack(registry_of(hello))

    def fatal(connection: Connection) -> None:
        raise SystemExit("a unit that takes the writer thread down")

    # Never resolves: the thread that would resolve it is gone.
    doomed = asyncio.ensure_future(stack.coordinator.writer.run(fatal, "fatal"))
    await eventually(lambda: not stack.coordinator.writer.alive, timeout=20)
    healthy, reason = stack.coordinator.healthy()
    assert not healthy and "writer thread has died" in reason
    await eventually(lambda: _is(stack, health_pb2.HealthCheckResponse.NOT_SERVING), timeout=20)
    doomed.cancel()


async def _is(stack: Stack, status: int) -> bool:
    return await health_status(stack) == status
