"""Helpers for tests that look past the API: the database as stored, restarts, raw stubs.

Tests of operator actions and bad input must show that what is *stored* is right
(nothing lost, nothing changed, no workflow stranded), which the API alone cannot
prove; these helpers read the coordinator's own database with a separate
connection, the way an operator with ``psql`` / ``sqlite3`` would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.pool import NullPool

from conveyor.client.client import AsyncClient
from conveyor.client.models import Workflow, WorkflowStatus
from conveyor.coordinator.store.schema import cluster, replay_queue, steps, tasks, workflows
from conveyor.tasks import HANDLER_MARK, HandlerRegistry
from conveyor.v1 import admin_service_pb2_grpc, executor_service_pb2_grpc, workflow_service_pb2_grpc
from conveyor.workflow import WorkflowRegistry
from support import Stack

#: The ``make_stack`` fixture of conftest: ``await make_stack(registry, **coordinator_config)``.
MakeStack = Callable[..., Awaitable[Stack]]

#: The tables whose contents are the durable state of workflows.
STATE_TABLES = (cluster, workflows, steps, tasks, replay_queue)


def _run(url: str, work: Callable[[sa.Connection], Any]) -> Any:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            return work(connection)
    finally:
        engine.dispose()


async def fetch(url: str, statement: sa.Executable) -> list[Row[Any]]:
    """Rows of ``statement``, read in a separate connection (off the event loop)."""
    return await asyncio.to_thread(_run, url, lambda c: list(c.execute(statement).all()))


async def execute(url: str, statement: sa.Executable) -> int:
    """Run a write statement and commit; returns the row count."""
    return await asyncio.to_thread(_run, url, lambda c: c.execute(statement).rowcount)


async def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the workflow-state tables, in primary-key order, for before/after comparisons."""

    def read(connection: sa.Connection) -> dict[str, list[tuple[Any, ...]]]:
        return {
            table.name: [
                tuple(row)
                for row in connection.execute(sa.select(table).order_by(*table.primary_key.columns)).all()
            ]
            for table in STATE_TABLES
        }

    return await asyncio.to_thread(_run, url, read)


async def task_rows(url: str, workflow_id: str | None = None) -> list[Row[Any]]:
    query = sa.select(tasks).order_by(tasks.c.id)
    if workflow_id is not None:
        query = query.where(tasks.c.workflow_id == workflow_id)
    return await fetch(url, query)


async def step_rows(url: str, workflow_id: str) -> list[Row[Any]]:
    return await fetch(
        url, sa.select(steps).where(steps.c.workflow_id == workflow_id).order_by(steps.c.number)
    )


async def replay_rows(url: str) -> list[Row[Any]]:
    return await fetch(url, sa.select(replay_queue).order_by(replay_queue.c.workflow_id))


async def restart_coordinator(stack: Stack, registry: WorkflowRegistry | None = None) -> None:
    """Stop the coordinator and start a new one on the same database and port (optionally
    other code). The stack gets a new client; its executors reconnect by themselves.
    """
    await stack.stop_coordinator()
    if registry is not None:
        stack.registry = registry
    if stack.client is not None:
        await stack.client.close()
        stack.client = None
    await stack.start_coordinator()


def handlers_of(*functions: Callable[[Any], Any]) -> HandlerRegistry:
    """A registry of ``@task_handler`` functions, each under the kind it was marked with."""
    registry = HandlerRegistry()
    for function in functions:
        registry.register(getattr(function, HANDLER_MARK), function)
    return registry


async def wait_finished(client: AsyncClient, workflow_id: str, within: float = 20.0) -> Workflow:
    """Poll (briskly) until the workflow finishes; fails after ``within`` seconds."""
    return await client.wait(workflow_id, timeout=within, poll_interval=0.05)


async def statuses(client: AsyncClient, workflow_ids: list[str]) -> list[WorkflowStatus]:
    return [(await client.get_workflow(workflow_id)).status for workflow_id in workflow_ids]


class RawStubs:
    """The three services' generated stubs on a channel of their own, for requests the client cannot build."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.workflows = workflow_service_pb2_grpc.WorkflowServiceStub(self.channel)
        self.executors = executor_service_pb2_grpc.ExecutorServiceStub(self.channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(self.channel)

    async def __aenter__(self) -> RawStubs:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.channel.close()


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    """The error a raw stub call fails with (the test fails if the call succeeds)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded; an error status was expected")
