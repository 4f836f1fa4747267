"""WatchWorkflow: a snapshot, then each step's change in journal order, then the finish; pushed by
the engine as it commits (no polling per watcher); re-watched by the client after a restart."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from conveyor import WorkflowContext, task_handler, workflow
from conveyor.client.client import AsyncClient
from conveyor.client.models import WatchEvent, WorkflowStatus
from conveyor.coordinator import watch as watch_module
from conveyor.coordinator.store import watching
from conveyor.coordinator.store.schema import workflows
from conveyor.errors import DeadlineExceeded, NotFound
from conveyor.v1 import workflow_service_pb2
from support import Stack, eventually, registry_of
from toolkit import MakeStack, RawStubs, execute, handlers_of, restart_coordinator, rpc_error, task_rows

SHARDS = 4


@workflow
async def pipeline(ctx: WorkflowContext, topic: str) -> Any:
    first = await ctx.task("gated", f"{topic}-0")
    second = await ctx.task("gated", f"{topic}-1")
    both = await asyncio.gather(ctx.task("gated", f"{topic}-2"), ctx.task("gated", f"{topic}-3"))
    return [first, second, *both]


@workflow
async def parked(ctx: WorkflowContext, item: int) -> Any:
    return await ctx.task("gated", item)


@workflow
async def broken(ctx: WorkflowContext, item: int) -> Any:
    await ctx.task("gated", item)
    raise ValueError("broken on purpose")


WORKFLOWS = registry_of(pipeline, parked, broken)


class Gate:
    """A ``gated`` task handler that finishes a task only when the test lets it."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    def handlers(self) -> Any:
        @task_handler("gated")
        async def gated(payload: Any) -> Any:
            await self.open.wait()
            return payload

        return handlers_of(gated)


def watchers(stack: Stack) -> int:
    return int(stack.coordinator.ctx.watches.watcher_count)


async def collect(client: AsyncClient, workflow_id: str) -> list[WatchEvent]:
    return [event async for event in client.watch_workflow(workflow_id)]


async def test_a_watcher_sees_the_snapshot_then_every_step_in_order_then_the_finish(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    gate = Gate()
    started = await stack.client.start_workflow("pipeline", {"topic": "t"})
    watching = asyncio.create_task(collect(stack.client, started.workflow_id))
    await eventually(lambda: watchers(stack) == 1)
    stack.start_executor(handlers=gate.handlers(), llm=False)
    gate.open.set()
    events = await asyncio.wait_for(watching, 60)

    snapshot, *changes = events
    assert snapshot.kind == "snapshot" and snapshot.workflow.status is WorkflowStatus.RUNNING
    assert changes[-1].kind == "workflow_finished"
    assert changes[-1].workflow.status is WorkflowStatus.COMPLETED
    assert changes[-1].workflow.result == ["t-0", "t-1", "t-2", "t-3"]
    assert all(event.kind != "workflow_finished" for event in changes[:-1])
    # Every step is seen to start once (in the snapshot or as an event), in journal order, and
    # to complete once, after it started.
    seen_started = [step.number for step in snapshot.workflow.steps]
    seen_started += [e.step.number for e in changes if e.kind == "step_started" and e.step]
    assert seen_started == [0, 1, 2, 3]
    completions = [(i, e.step.number) for i, e in enumerate(changes) if e.kind == "step_completed" and e.step]
    assert sorted(number for _, number in completions) == [0, 1, 2, 3]
    assert [number for _, number in completions][:2] == [0, 1]
    for index, number in completions:
        starts = [
            i
            for i, e in enumerate(changes)
            if e.kind == "step_started" and e.step and e.step.number == number
        ]
        assert all(i < index for i in starts)
        assert changes[index].step is not None and changes[index].step.result == f"t-{number}"
    assert watchers(stack) == 0


async def test_a_finished_workflow_streams_its_snapshot_and_ends(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    started = await stack.client.start_workflow("parked", [1])
    await eventually(lambda: task_rows(stack.database_url))
    await stack.client.cancel_workflow(started.workflow_id, "enough")

    events = await collect(stack.client, started.workflow_id)

    assert [event.kind for event in events] == ["snapshot"]
    assert events[0].workflow.status is WorkflowStatus.CANCELLED
    assert len(events[0].workflow.steps) == 1
    assert (await stack.client.wait(started.workflow_id, timeout=10)).error == "enough"


async def test_an_unknown_or_malformed_id_is_refused(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    with pytest.raises(NotFound, match="no workflow with id 'nope'"):
        await collect(stack.client, "nope")
    async with RawStubs(stack.server.address) as stubs:
        error = await rpc_error(
            _drain(stubs.workflows.WatchWorkflow(workflow_service_pb2.WatchWorkflowRequest(workflow_id="")))
        )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert watchers(stack) == 0


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


async def test_a_thousand_watchers_all_get_the_final_status_without_polling(
    make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    client = stack.client
    gate = Gate()
    ids = [s.workflow_id for s in await client.start_workflows([("parked", [i]) for i in range(500)])]
    ids += [s.workflow_id for s in await client.start_workflows([("broken", [i]) for i in range(500)])]

    async def no_polling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("wait polled GetWorkflow instead of watching")

    monkeypatch.setattr(AsyncClient, "get_workflow", no_polling)
    waits = [asyncio.create_task(client.wait(workflow_id, timeout=240)) for workflow_id in ids]
    await eventually(lambda: watchers(stack) == 1000, timeout=120)
    stack.start_executor(handlers=gate.handlers(), llm=False, concurrency=200)
    gate.open.set()
    finished = await asyncio.gather(*waits)

    assert [w.id for w in finished] == ids
    assert [w.status for w in finished] == [WorkflowStatus.COMPLETED] * 500 + [WorkflowStatus.FAILED] * 500
    assert finished[0].result == 0 and "broken on purpose" in (finished[-1].error or "")
    await eventually(lambda: watchers(stack) == 0)


async def test_a_wait_survives_a_coordinator_restart(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    gate = Gate()
    started = await stack.client.start_workflow("parked", [7])
    # A client of its own: the stack's is replaced at the restart; this one reconnects.
    async with AsyncClient(stack.server.address, timeout=30) as client:
        waiting = asyncio.create_task(client.wait(started.workflow_id, timeout=120))
        await eventually(lambda: watchers(stack) == 1)
        await restart_coordinator(stack)
        await eventually(lambda: watchers(stack) == 1)  # it watches the new coordinator
        assert not waiting.done()
        stack.start_executor(handlers=gate.handlers(), llm=False)
        gate.open.set()
        finished = await asyncio.wait_for(waiting, 60)
    assert (finished.status, finished.result) == (WorkflowStatus.COMPLETED, 7)


async def test_a_wait_gives_up_after_its_timeout(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    started = await stack.client.start_workflow("parked", [1])
    with pytest.raises(DeadlineExceeded, match=r"still running after 0\.3s"):
        await stack.client.wait(started.workflow_id, timeout=0.3)
    await eventually(lambda: watchers(stack) == 0)


async def test_idle_watchers_cost_one_coalesced_check_not_a_read_each(
    make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 watchers of idle workflows: one snapshot read each, then only the periodic check, one
    query for all of them; a change no event announced is still caught by it."""
    monkeypatch.setattr(watch_module, "CATCH_UP_INTERVAL", 0.1)
    state_reads: list[list[str]] = []
    version_reads: list[list[str]] = []
    real_states, real_versions = watching.states, watching.versions

    def states(connection: Any, from_step: Any) -> Any:
        state_reads.append(list(from_step))
        return real_states(connection, from_step)

    def versions(connection: Any, workflow_ids: Any) -> Any:
        version_reads.append(list(workflow_ids))
        return real_versions(connection, workflow_ids)

    monkeypatch.setattr(watching, "states", states)
    monkeypatch.setattr(watching, "versions", versions)
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = [s.workflow_id for s in await stack.client.start_workflows([("parked", [i]) for i in range(200)])]
    await eventually(lambda: task_rows(stack.database_url))
    await eventually(lambda: watchers(stack) == 0)
    state_reads.clear()
    waits = [asyncio.create_task(stack.client.wait(workflow_id, timeout=120)) for workflow_id in ids]
    await eventually(lambda: watchers(stack) == 200)
    checks = len(version_reads)
    await eventually(lambda: len(version_reads) >= checks + 3)
    assert set(ids) <= {workflow_id for read in state_reads for workflow_id in read}  # the snapshots
    reads, checks = len(state_reads), len(version_reads)
    await eventually(lambda: len(version_reads) >= checks + 5)

    assert len(state_reads) == reads  # idle: no workflow read again
    assert all(sorted(read) == sorted(ids) for read in version_reads[checks:])  # one check for all
    # A change made behind the engine's back (no notification) reaches the watcher anyway.
    await execute(
        stack.database_url,
        sa.update(workflows).where(workflows.c.id == ids[0]).values(status="failed", error="from outside"),
    )
    first = await asyncio.wait_for(waits[0], 30)
    assert (first.status, first.error) == (WorkflowStatus.FAILED, "from outside")
    for wait in waits[1:]:
        wait.cancel()
    await asyncio.gather(*waits[1:], return_exceptions=True)


def watch_call(stubs: RawStubs, workflow_id: str, timeout: float | None = None) -> Any:
    return stubs.workflows.WatchWorkflow(
        workflow_service_pb2.WatchWorkflowRequest(workflow_id=workflow_id), timeout=timeout
    )


async def test_watchers_beyond_the_cap_are_refused_with_resource_exhausted(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS, max_watchers=2)
    started = await stack.client.start_workflow("parked", [1])
    async with RawStubs(stack.server.address) as stubs:
        first, second = watch_call(stubs, started.workflow_id), watch_call(stubs, started.workflow_id)
        for call in (first, second):
            await call.read()  # the snapshot: registered
        assert watchers(stack) == 2

        # The deadline only keeps a watch that was let in (the bug) from hanging the test.
        error = await rpc_error(_drain(watch_call(stubs, started.workflow_id, timeout=30)))

        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 WatchWorkflow streams" in (error.details() or "")
        assert "--max-watchers" in (error.details() or "")
        assert watchers(stack) == 2
        first.cancel()  # a watch that ends frees its place
        await eventually(lambda: watchers(stack) == 1)
        third = watch_call(stubs, started.workflow_id)
        assert (await third.read()).workflow.id == started.workflow_id
        assert watchers(stack) == 2


async def test_a_watcher_whose_client_goes_away_is_removed(make_stack: MakeStack) -> None:
    """The client's connection closes mid-watch (no cancel of its own): the server forgets the watcher."""
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    started = await stack.client.start_workflow("parked", [1])
    stubs = RawStubs(stack.server.address)
    calls = [watch_call(stubs, started.workflow_id) for _ in range(3)]
    for call in calls:
        await call.read()
    assert watchers(stack) == 3

    await stubs.channel.close()

    await eventually(lambda: watchers(stack) == 0)
