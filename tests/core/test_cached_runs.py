"""Cancelled workflows leave the workflow cache: whatever cancels them (a client, a bulk cancel, a
parent that finished), their suspended runs are dropped and closed, so no memory is held for dead
workflows and no later lookup can meet one."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import WorkflowContext, workflow
from conveyor.coordinator.model import child_workflow_id
from conveyor.coordinator.workflow_cache import MODE_VARIABLE, CacheMode
from support import Stack, eventually, registry_of
from toolkit import MakeStack, wait_finished


@pytest.fixture(autouse=True)
def cache_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODE_VARIABLE, CacheMode.ON.value)


@workflow
async def waits(ctx: WorkflowContext) -> Any:
    return await ctx.wait_for_signal("go")


@workflow
async def waits_for_child(ctx: WorkflowContext) -> Any:
    return await ctx.child("waits", {})


@workflow
async def leaves_child(ctx: WorkflowContext) -> Any:
    ctx.start_child("waits", {})
    return await ctx.wait_for_signal("finish")


WORKFLOWS = registry_of(waits, waits_for_child, leaves_child)


async def cached(stack: Stack, count: int) -> None:
    """Wait until the cache holds ``count`` suspended runs."""
    cache = stack.coordinator.stats.workflow_cache
    await eventually(lambda: cache.entries == count)


async def test_cancelling_a_workflow_drops_its_run_and_its_childrens(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    parent_id = (await stack.client.start_workflow("waits_for_child", {})).workflow_id
    await cached(stack, 2)

    await stack.client.cancel_workflow(parent_id, "no longer needed")

    await cached(stack, 0)
    assert stack.coordinator.stats.workflow_cache.bytes == 0
    assert stack.coordinator.stats.workflow_cache.evictions == 2


async def test_a_bulk_cancel_drops_the_runs_it_cancels(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    await stack.client.start_workflows([("waits", {}) for _ in range(5)])
    await cached(stack, 5)

    assert (await stack.client.cancel_workflows(None, name="waits")).cancelled == 5

    await cached(stack, 0)
    assert stack.coordinator.stats.workflow_cache.evictions == 5


async def test_a_parent_that_finishes_drops_the_runs_of_its_children(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    parent_id = (await stack.client.start_workflow("leaves_child", {})).workflow_id
    await cached(stack, 2)

    await stack.client.signal_workflow(parent_id, "finish", "done")
    await wait_finished(stack.client, parent_id)

    assert (await wait_finished(stack.client, child_workflow_id(parent_id, 0))).error == (
        "its parent workflow finished"
    )
    await cached(stack, 0)
