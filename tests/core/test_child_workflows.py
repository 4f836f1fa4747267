"""Child workflows: ``ctx.child`` / ``ctx.start_child``, on both databases.

A child is a workflow of its own that keeps its root's FIFO place; its outcome reaches the
parent where it awaits (``ChildWorkflowFailed`` for a failure), cancellation goes down the
family, and a coordinator restart loses none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import sqlalchemy as sa

from conveyor import ChildWorkflowFailed, WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator import engine as engine_module
from conveyor.coordinator.model import child_workflow_id
from conveyor.coordinator.store.schema import workflows
from support import ManualExecutor, eventually, registry_of
from toolkit import MakeStack, fetch, restart_coordinator, task_rows, wait_finished


@workflow
async def leaf(ctx: WorkflowContext, n: int) -> int:
    return n * 2


@workflow
async def failing_leaf(ctx: WorkflowContext, n: int) -> int:
    raise RuntimeError(f"leaf {n} broke")


@workflow
async def waiting_leaf(ctx: WorkflowContext) -> Any:
    return await ctx.wait_for_signal("go")


@workflow
async def parked_leaf(ctx: WorkflowContext) -> Any:
    return await ctx.task("unserved", None)


@workflow
async def family(ctx: WorkflowContext, n: int) -> dict[str, Any]:
    one = await ctx.child("leaf", {"n": n})
    handles = [ctx.start_child("leaf", {"n": i}, name=f"leaf-{i}") for i in range(3)]
    many = [await handle for handle in handles]
    return {"one": one, "many": many, "ids": [handle.workflow_id for handle in handles]}


@workflow
async def catches(ctx: WorkflowContext) -> str:
    try:
        await ctx.child("failing_leaf", {"n": 1})
    except ChildWorkflowFailed as error:
        return f"caught {error.child_workflow_id}: {error.error}"
    return "not reached"


@workflow
async def fan_out(ctx: WorkflowContext, count: int) -> int:
    handles = [ctx.start_child("leaf", {"n": i}) for i in range(count)]
    return sum(await asyncio.gather(*handles))


@workflow
async def holds_child(ctx: WorkflowContext) -> Any:
    return await ctx.child("waiting_leaf", {})


@workflow
async def abandons_child(ctx: WorkflowContext) -> str:
    ctx.start_child("waiting_leaf", {})
    await ctx.child("leaf", {"n": 1})  # the waiting child has started by the time this returns
    return "done without waiting"


@workflow
async def grandparent(ctx: WorkflowContext) -> Any:
    return await ctx.child("parent_of_parked", {})


@workflow
async def parent_of_parked(ctx: WorkflowContext) -> Any:
    return await ctx.child("parked_leaf", {})


@workflow
async def unknown_child(ctx: WorkflowContext) -> Any:
    return await ctx.child("no_such_workflow", {})


@workflow
async def times_out_on_child(ctx: WorkflowContext) -> Any:
    """Gives up on its child (wait_for's timeout cancels the wait), then keeps running."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ctx.child("parent_of_parked", {}), timeout=0.1)
    return await ctx.wait_for_signal("end")


@workflow
async def races_children(ctx: WorkflowContext) -> Any:
    """Races two started children, keeps the winner and cancels the loser, then keeps running."""
    slow = asyncio.ensure_future(ctx.start_child("parked_leaf", {}))
    fast = asyncio.ensure_future(ctx.start_child("leaf", {"n": 4}))
    done, pending = await asyncio.wait([slow, fast], return_when=asyncio.FIRST_COMPLETED)
    for loser in pending:
        loser.cancel()
    winner = next(iter(done)).result()
    return [winner, await ctx.wait_for_signal("end")]


@workflow
async def drops_child_on_signal(ctx: WorkflowContext) -> Any:
    """Waits for its child or a "stop" signal, whichever comes first; stops waiting for the other."""
    child = asyncio.ensure_future(ctx.child("parent_of_parked", {}))
    stop = asyncio.ensure_future(ctx.wait_for_signal("stop"))
    await asyncio.wait([child, stop], return_when=asyncio.FIRST_COMPLETED)
    child.cancel()
    return await ctx.wait_for_signal("end")


WORKFLOWS = registry_of(
    drops_child_on_signal,
    leaf,
    failing_leaf,
    waiting_leaf,
    parked_leaf,
    family,
    catches,
    fan_out,
    holds_child,
    abandons_child,
    grandparent,
    parent_of_parked,
    unknown_child,
    times_out_on_child,
    races_children,
)


async def status_of(url: str, workflow_id: str) -> str | None:
    rows = await fetch(url, sa.select(workflows.c.status).where(workflows.c.id == workflow_id))
    return rows[0].status if rows else None


async def running(url: str, workflow_id: str) -> bool:
    return await status_of(url, workflow_id) == "running"


async def test_children_return_their_results_and_get_shows_the_family(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    parent_id = (await stack.client.start_workflow("family", {"n": 5})).workflow_id

    finished = await wait_finished(stack.client, parent_id, within=60)  # five replay rounds

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    expected_ids = [child_workflow_id(parent_id, step) for step in (1, 2, 3)]
    assert finished.result == {"one": 10, "many": [0, 2, 4], "ids": expected_ids}
    shown = await stack.client.get_workflow(parent_id, include_steps=True)
    assert [(c.name, c.parent_step_number, c.status) for c in shown.children] == [
        ("leaf", 0, WorkflowStatus.COMPLETED),
        ("leaf", 1, WorkflowStatus.COMPLETED),
        ("leaf", 2, WorkflowStatus.COMPLETED),
        ("leaf", 3, WorkflowStatus.COMPLETED),
    ]
    assert [s.kind for s in shown.steps] == ["child"] * 4
    assert [s.name for s in shown.steps] == ["leaf", "leaf-0", "leaf-1", "leaf-2"]
    child = await stack.client.get_workflow(expected_ids[2])
    assert (child.parent_workflow_id, child.parent_step_number, child.result) == (parent_id, 3, 4)
    assert not (await stack.client.diagnose()).violations


async def test_a_failed_child_raises_child_workflow_failed_in_the_parent(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    parent_id = (await stack.client.start_workflow("catches", {})).workflow_id

    finished = await wait_finished(stack.client, parent_id)

    child_id = child_workflow_id(parent_id, 0)
    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result.startswith(f"caught {child_id}: child workflow {child_id} (failing_leaf) failed")
    assert "leaf 1 broke" in finished.result


async def test_cancelling_a_parent_cancels_its_descendants(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    root = (await stack.client.start_workflow("grandparent", {})).workflow_id
    child = child_workflow_id(root, 0)
    grandchild = child_workflow_id(child, 0)
    await eventually(lambda: running(stack.database_url, grandchild))

    await stack.client.cancel_workflow(root, "no longer needed")

    assert [await status_of(stack.database_url, wid) for wid in (root, child, grandchild)] == [
        "cancelled"
    ] * 3
    assert await task_rows(stack.database_url) == []
    assert not (await stack.client.diagnose()).violations


async def test_a_child_inherits_its_roots_place_in_the_fifo_queue(make_stack: MakeStack) -> None:
    """Created after a newer root, the grandchild's task is still keyed by its root's creation time,
    so it is served first."""
    stack = await make_stack(WORKFLOWS)
    root = (await stack.client.start_workflow("grandparent", {})).workflow_id
    newer = (await stack.client.start_workflow("parked_leaf", {})).workflow_id
    grandchild = child_workflow_id(child_workflow_id(root, 0), 0)

    async def both_queued() -> bool:
        return len(await task_rows(stack.database_url)) == 2

    await eventually(both_queued)
    rows = {row.workflow_id: row for row in await task_rows(stack.database_url)}
    created = {
        row.id: row.created_at
        for row in await fetch(stack.database_url, sa.select(workflows.c.id, workflows.c.created_at))
    }

    assert rows[grandchild].workflow_created_at == created[root]
    assert created[grandchild] > created[newer] > created[root]
    assert rows[grandchild].workflow_created_at < rows[newer].workflow_created_at


async def test_a_parent_that_finishes_first_takes_its_running_children_with_it(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    parent_id = (await stack.client.start_workflow("abandons_child", {})).workflow_id

    finished = await wait_finished(stack.client, parent_id)
    child = await wait_finished(stack.client, child_workflow_id(parent_id, 0))

    assert finished.result == "done without waiting"
    assert child.status is WorkflowStatus.CANCELLED
    assert child.error == "its parent workflow finished"


async def test_a_child_the_parent_stops_waiting_for_is_cancelled_with_its_descendants(
    make_stack: MakeStack,
) -> None:
    """wait_for's timeout withdraws the child step: the child and its own child are cancelled, while
    the parent runs on (before, both stayed running forever)."""
    stack = await make_stack(WORKFLOWS)
    parent_id = (await stack.client.start_workflow("times_out_on_child", {})).workflow_id

    async def parent_waits_for_its_signal() -> bool:
        explanation = await stack.client.explain_workflow(parent_id)
        return [step.wait for step in explanation.steps] == ["signal"]

    await eventually(parent_waits_for_its_signal)
    [child_link] = (await stack.client.get_workflow(parent_id, include_steps=True)).children
    child_id = child_link.workflow_id
    grandchild_id = child_workflow_id(child_id, 0)
    child = await wait_finished(stack.client, child_id)
    grandchild = await wait_finished(stack.client, grandchild_id)

    assert await status_of(stack.database_url, parent_id) == "running"
    assert (child.status, grandchild.status) == (WorkflowStatus.CANCELLED, WorkflowStatus.CANCELLED)
    assert child.error == "its parent workflow stopped waiting for it"
    assert grandchild.error == "its parent workflow finished"
    assert await task_rows(stack.database_url) == []
    assert not (await stack.client.diagnose()).violations
    await stack.client.signal_workflow(parent_id, "end", "over")
    assert (await wait_finished(stack.client, parent_id)).result == "over"


async def test_the_child_that_loses_a_race_is_cancelled(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    parent_id = (await stack.client.start_workflow("races_children", {})).workflow_id
    loser_id = child_workflow_id(parent_id, 0)
    await eventually(lambda: status_of(stack.database_url, loser_id))  # started

    loser = await wait_finished(stack.client, loser_id)

    assert loser.status is WorkflowStatus.CANCELLED
    assert await status_of(stack.database_url, parent_id) == "running"
    await stack.client.signal_workflow(parent_id, "end", "over")
    finished = await wait_finished(stack.client, parent_id)
    assert finished.result == [8, "over"]
    assert not (await stack.client.diagnose()).violations


async def test_the_executor_running_a_dropped_descendants_task_is_told_to_stop(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    parent_id = (await stack.client.start_workflow("drops_child_on_signal", {})).workflow_id
    grandchild_id = child_workflow_id(child_workflow_id(parent_id, 0), 0)
    async with ManualExecutor(stack.server.address, "worker", task_kinds=["unserved"]) as worker:
        await worker.connect(free_slots=1)
        [task] = await worker.take(1, within=60)  # three replays away
        assert task.workflow_id == grandchild_id

        await stack.client.signal_workflow(parent_id, "stop", None)

        def cancels() -> list[Any]:
            return [m.cancel for m in worker.messages if m.WhichOneof("message") == "cancel"]

        [cancel] = await eventually(cancels)
        assert [a.task_id for a in cancel.tasks] == [task.task_id]
    assert (await wait_finished(stack.client, grandchild_id)).status is WorkflowStatus.CANCELLED
    assert await status_of(stack.database_url, parent_id) == "running"


async def test_cancelling_a_child_fails_the_parent_that_awaits_it(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    parent_id = (await stack.client.start_workflow("holds_child", {})).workflow_id
    child_id = child_workflow_id(parent_id, 0)
    await eventually(lambda: running(stack.database_url, child_id))

    await stack.client.cancel_workflow(child_id, "operator stopped it")
    finished = await wait_finished(stack.client, parent_id)

    assert finished.status is WorkflowStatus.FAILED
    assert finished.error == (
        f"step 0 ('waiting_leaf') failed: child workflow {child_id} (waiting_leaf) cancelled: "
        "operator stopped it"
    )


async def test_families_advance_on_their_own_commits_not_on_the_engines_safety_rearm(
    make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Starting a child, a child finishing and a child cancelled by an operator each enqueue a
    # replay in their own transaction; that commit must wake the replay loop. The engine's
    # periodic re-arm (a safety net, every few seconds) is taken away: before, each hop of a
    # family waited for it.
    monkeypatch.setattr(engine_module, "REARM_INTERVAL", 3600.0)
    stack = await make_stack(WORKFLOWS)
    parent_id = (await stack.client.start_workflow("family", {"n": 5})).workflow_id
    finished = await wait_finished(stack.client, parent_id, within=20)
    assert finished.status is WorkflowStatus.COMPLETED, finished.error

    holder_id = (await stack.client.start_workflow("holds_child", {})).workflow_id
    child_id = child_workflow_id(holder_id, 0)
    await eventually(lambda: running(stack.database_url, child_id))
    await stack.client.cancel_workflow(child_id, "operator stopped it")
    finished = await wait_finished(stack.client, holder_id, within=20)
    assert finished.status is WorkflowStatus.FAILED, finished.error


async def test_an_unknown_child_workflow_fails_the_parent_with_a_clear_message(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    parent_id = (await stack.client.start_workflow("unknown_child", {})).workflow_id

    finished = await wait_finished(stack.client, parent_id)

    assert finished.status is WorkflowStatus.FAILED
    assert "no workflow named 'no_such_workflow' is registered" in (finished.error or "")


async def test_children_survive_a_coordinator_restart(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    parent_id = (await stack.client.start_workflow("holds_child", {})).workflow_id
    child_id = child_workflow_id(parent_id, 0)

    async def child_waits() -> bool:
        explanation = await stack.client.explain_workflow(child_id)
        return [step.wait for step in explanation.steps] == ["signal"]

    await eventually(lambda: running(stack.database_url, child_id))
    await eventually(child_waits)
    explained = await stack.client.explain_workflow(parent_id)
    assert [step.wait for step in explained.steps] == ["child"]
    assert child_id in explained.steps[0].text

    await restart_coordinator(stack)
    await stack.client.signal_workflow(child_id, "go", {"after": "restart"})
    finished = await wait_finished(stack.client, parent_id)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == {"after": "restart"}


async def test_a_parent_fans_out_to_a_thousand_children(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    parent_id = (await stack.client.start_workflow("fan_out", {"count": 1000})).workflow_id

    finished = await wait_finished(stack.client, parent_id, within=240)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == sum(n * 2 for n in range(1000))
    shown = await stack.client.get_workflow(parent_id, include_steps=True)
    assert len(shown.children) == 1000
    assert {child.status for child in shown.children} == {WorkflowStatus.COMPLETED}
    assert not (await stack.client.diagnose()).violations
