"""The Python client covers every RPC of the protos, for asyncio and for blocking code alike.

Coverage is proven twice: by name (every RPC of the client-facing services has a
method of the same name, snake_case, on both clients) and by traffic (calling
every async method against a live coordinator sends every RPC, seen by an
interceptor on the client's channel). The blocking client then runs the same
operations against a coordinator on another thread's event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from conveyor import WorkflowContext, workflow
from conveyor.client import AsyncClient, Client
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.config import CoordinatorConfig
from conveyor.coordinator.server import CoordinatorServer
from conveyor.errors import FailedPrecondition, InvalidArgument, NotFound
from conveyor.v1 import admin_service_pb2, executor_service_pb2, workflow_service_pb2
from support import registry_of
from toolkit import MakeStack, task_rows

#: Services an application or operator calls. ExecutorService is the executor's own
#: protocol (a stream with credits and fencing), spoken by executor/worker.py.
CLIENT_SERVICES = {"WorkflowService", "AdminService"}
EXECUTOR_ONLY = {"ExecutorService"}


@workflow
async def parked(ctx: WorkflowContext, item: int) -> Any:
    """Waits for a task kind no executor serves: stays running until cancelled or failed."""
    return await ctx.task("unserved", item)


@workflow
async def instant(ctx: WorkflowContext, value: int) -> int:
    return value


WORKFLOWS = registry_of(parked, instant)


def service_descriptors() -> dict[str, Any]:
    return {
        service.name: service
        for module in (workflow_service_pb2, admin_service_pb2, executor_service_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
    }


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def rpc_methods(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls, callable) if not name.startswith("_")}


def test_every_rpc_of_the_client_services_has_a_method_on_both_clients() -> None:
    services = service_descriptors()
    assert set(services) == CLIENT_SERVICES | EXECUTOR_ONLY, "a new service needs a decision here"

    expected = {snake_case(m.name) for name in CLIENT_SERVICES for m in services[name].methods}

    assert expected - rpc_methods(AsyncClient) == set()
    assert expected - rpc_methods(Client) == set()
    # The blocking client is the async one, method for method (close/wait/helpers included).
    assert rpc_methods(AsyncClient) - {"close"} == rpc_methods(Client) - {"close"}


class _RecordingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.methods: set[str] = set()

    async def intercept_unary_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        method = details.method
        self.methods.add(method.decode() if isinstance(method, bytes) else method)
        return await continuation(details, request)


class _RecordingStreamInterceptor(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, methods: set[str]) -> None:
        self.methods = methods

    async def intercept_unary_stream(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        method = details.method
        self.methods.add(method.decode() if isinstance(method, bytes) else method)
        return await continuation(details, request)


async def test_calling_every_async_method_sends_every_rpc_of_the_client_services(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS)
    recorder = _RecordingInterceptor()
    channel = grpc.aio.insecure_channel(
        stack.server.address, interceptors=[recorder, _RecordingStreamInterceptor(recorder.methods)]
    )
    client = AsyncClient(channel=channel, timeout=20)
    try:
        first, second = await client.start_workflows([("parked", {"item": 1}), ("parked", {"item": 2})])
        single = await client.start_workflow("instant", {"value": 4}, idempotency_key="key-1")
        assert (await client.wait(single.workflow_id, timeout=20)).result == 4
        events = [event async for event in client.watch_workflow(single.workflow_id)]
        assert [event.kind for event in events] == ["snapshot"]
        assert (
            await client.get_workflow(first.workflow_id, include_steps=True)
        ).status is WorkflowStatus.RUNNING
        assert [w.id async for w in client.list_workflows(name="parked", page_size=1)] == [
            first.workflow_id,
            second.workflow_id,
        ]
        assert (await client.count_workflows())[WorkflowStatus.COMPLETED] == 1
        assert (await client.explain_workflow(first.workflow_id)).situation in (
            "steps_in_progress",
            "replay_queued",
        )
        sent = await client.signal_workflow(first.workflow_id, "nobody-waits", {"n": 1})
        assert (sent.delivered, sent.duplicate) == (False, False)
        assert (
            await client.cancel_workflow(first.workflow_id, "no longer needed")
        ).error == "no longer needed"
        assert (await client.cancel_workflows(None, name="parked", dry_run=True)).matched == 1
        assert (await client.diagnose()).shard_count == 100
        assert (await client.bump_epoch("test")).epoch == 2
        await _until_queued(stack.database_url, 1)
        assert await client.fail_pending_tasks(None) == 1
        await client.clear_task_queue(None)
        await client.clear_replay_queue(None)
        purged = await client.purge_workflows(datetime.now(UTC) + timedelta(minutes=1), dry_run=True)
        assert purged.matched == 3
        with pytest.raises(NotFound):
            await client.get_workflow("missing")
    finally:
        await client.close()
        await channel.close()

    services = service_descriptors()
    every_rpc = {
        f"/{services[name].full_name}/{m.name}" for name in CLIENT_SERVICES for m in services[name].methods
    }
    assert every_rpc - recorder.methods == set()


async def _until_queued(database_url: str, count: int) -> None:
    for _ in range(400):
        if len(await task_rows(database_url)) == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} queued task(s)")


@pytest.fixture
def coordinator_on_a_thread(database_url: str) -> Iterator[str]:
    """A coordinator serving from another thread's event loop, for blocking code in this one."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="coordinator loop", daemon=True)
    thread.start()
    config = CoordinatorConfig(
        database_url=database_url, listen="127.0.0.1:0", heartbeat_interval=0.2, lease_ttl=2
    )

    async def start() -> CoordinatorServer:
        server = CoordinatorServer(config, WORKFLOWS)  # its gRPC server belongs to this loop
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    try:
        yield server.address
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace=0.5), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_the_blocking_client_runs_every_operation_and_raises_the_same_errors(
    coordinator_on_a_thread: str,
) -> None:
    with Client(coordinator_on_a_thread, timeout=20) as client:
        done = client.start_workflow("instant", {"value": 9})
        parked_ids = [s.workflow_id for s in client.start_workflows([("parked", [i]) for i in range(3)])]

        assert client.wait(done.workflow_id, timeout=20).result == 9
        assert client.get_workflow(done.workflow_id, include_steps=True).status is WorkflowStatus.COMPLETED
        assert [w.id for w in client.list_workflows(name="parked", page_size=2)] == parked_ids
        page, token = client.list_workflows_page(page_size=1)
        assert len(page) == 1 and token
        assert client.count_workflows("parked")[WorkflowStatus.RUNNING] == 3
        assert client.explain_workflow(done.workflow_id).situation == "finished"
        with pytest.raises(FailedPrecondition, match="already finished"):
            client.signal_workflow(done.workflow_id, "late")

        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        assert (
            client.cancel_workflows(None, name="parked", started_before=hour_ago, dry_run=True).matched == 0
        )
        preview = client.cancel_workflows(None, name="parked", limit=2, dry_run=True)
        assert (preview.matched, preview.cancelled, preview.sample_workflow_ids) == (
            2,
            0,
            tuple(parked_ids[:2]),
        )
        assert client.cancel_workflow(parked_ids[0]).status is WorkflowStatus.CANCELLED
        assert client.cancel_workflows(None, name="parked").cancelled == 2

        with pytest.raises(FailedPrecondition, match="already finished"):
            client.cancel_workflow(parked_ids[0])
        with pytest.raises(NotFound):
            client.explain_workflow("missing")
        with pytest.raises(InvalidArgument, match="shard 100 does not exist"):
            client.cancel_workflows(100)
        assert list(client.diagnose().violations) == []
        assert client.bump_epoch().epoch == 2
        assert client.fail_pending_tasks(None) == 0
        assert client.clear_task_queue(None).cleared_tasks == 0
        assert client.clear_replay_queue(0).cleared_entries == 0
