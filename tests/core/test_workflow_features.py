"""Workflow features beyond LLM calls: durable sleep, cancellation, listing, recorded time and randomness."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from conveyor import RetryPolicy, WorkflowContext, task_handler, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.clock import to_datetime
from conveyor.coordinator.store.schema import steps
from support import eventually, registry_of
from toolkit import MakeStack, fetch, handlers_of, restart_coordinator, step_rows, task_rows, wait_finished

NO_RETRY = RetryPolicy(max_attempts=1, initial_backoff=0.05)


@workflow
async def nap(ctx: WorkflowContext, seconds: float) -> str:
    await ctx.sleep(seconds, name="nap")
    return "awake"


@workflow
async def two_holds(ctx: WorkflowContext, item: int) -> list[Any]:
    return list(
        await asyncio.gather(
            ctx.task("hold", [item, 1], name="first", retry=NO_RETRY),
            ctx.task("hold", [item, 2], name="second", retry=NO_RETRY),
        )
    )


@workflow
async def quick(ctx: WorkflowContext, n: int) -> int:
    return n


@workflow
async def broken(ctx: WorkflowContext, n: int) -> int:
    raise RuntimeError(f"broken {n}")


@workflow
async def parked(ctx: WorkflowContext, n: int) -> Any:
    return await ctx.task("unserved", n, retry=NO_RETRY)


@workflow
async def stamps(ctx: WorkflowContext) -> dict[str, Any]:
    first = ctx.now()
    draw = ctx.random()
    await ctx.sleep(0.05, name="one")
    await ctx.sleep(0.05, name="two")
    return {
        "first": first.isoformat(),
        "draw": draw,
        "later": ctx.now().isoformat(),
        "draw_again": ctx.random(),
    }


WORKFLOWS = registry_of(nap, two_holds, quick, broken, parked, stamps)


async def sleep_step(url: str, workflow_id: str) -> Any:
    rows = await fetch(
        url, sa.select(steps).where(steps.c.workflow_id == workflow_id, steps.c.kind == "sleep")
    )
    return rows[0] if rows else None


# ----------------------------------------------------------------------------- ctx.sleep


async def test_sleep_completes_after_its_timer_fires(make_stack: MakeStack) -> None:
    """The timer is stored with the step; the step completes no earlier than its stored wake time."""
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("nap", {"seconds": 0.5})
    finished = await wait_finished(stack.client, started.workflow_id)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == "awake"
    step = await sleep_step(stack.database_url, started.workflow_id)
    assert (step.name, step.status, step.args) == ("nap", "completed", '{"seconds":0.5}')
    assert step.wake_at == step.created_at + 500_000
    assert step.completed_at >= step.wake_at


async def test_sleep_survives_a_coordinator_restart_and_still_wakes_the_workflow(
    make_stack: MakeStack,
) -> None:
    """The coordinator that set the timer is gone when it is due; the next one fires it from the database."""
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("nap", {"seconds": 1.5})
    await eventually(lambda: sleep_step(stack.database_url, started.workflow_id))

    await stack.stop_coordinator()
    asleep = await sleep_step(stack.database_url, started.workflow_id)
    assert (asleep.status, asleep.completed_at) == ("running", None), "the timer fired before the restart"
    await restart_coordinator(stack)
    finished = await wait_finished(stack.client, started.workflow_id)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == "awake"
    woke = await sleep_step(stack.database_url, started.workflow_id)
    assert woke.status == "completed"
    assert woke.completed_at >= woke.wake_at == asleep.wake_at


# ------------------------------------------------------------------------ CancelWorkflow


async def test_cancel_stops_a_running_workflow_drops_its_tasks_and_rejects_late_results(
    make_stack: MakeStack,
) -> None:
    """Cancelling mid-step: the queued sibling task is deleted, and the running one's result is stale."""
    release = asyncio.Event()

    @task_handler("hold")
    async def hold(payload: Any) -> Any:
        await release.wait()
        return payload

    stack = await make_stack(WORKFLOWS)
    stack.start_executor(handlers=handlers_of(hold), llm=False, concurrency=1)
    started = await stack.client.start_workflow("two_holds", {"item": 9})

    async def one_claimed_one_queued() -> bool:
        rows = await task_rows(stack.database_url, started.workflow_id)
        return sorted(row.claimed_by is None for row in rows) == [False, True]

    await eventually(one_claimed_one_queued)
    cancelled = await stack.client.cancel_workflow(started.workflow_id, "customer withdrew the request")

    assert cancelled.status is WorkflowStatus.CANCELLED
    assert cancelled.error == "customer withdrew the request"
    assert cancelled.completed_at is not None
    assert await task_rows(stack.database_url, started.workflow_id) == []
    detail = await stack.client.get_workflow(started.workflow_id, include_steps=True)
    assert [(s.name, s.status) for s in detail.steps] == [("first", "cancelled"), ("second", "cancelled")]

    release.set()

    async def rejected() -> bool:
        return (await stack.client.diagnose()).rejected_stale_results == 1

    await eventually(rejected)
    after = await stack.client.get_workflow(started.workflow_id, include_steps=True)
    assert (after.status, after.result) == (WorkflowStatus.CANCELLED, None)
    assert [(s.status, s.result) for s in after.steps] == [("cancelled", None), ("cancelled", None)]
    report = await stack.client.diagnose()
    assert list(report.violations) == []
    assert dict(report.workflows_by_status) == {"cancelled": 1}


# ------------------------------------------------------------------------- ListWorkflows


async def test_list_workflows_filters_by_status_and_name_and_pages_both_ways(make_stack: MakeStack) -> None:
    """Pages of three over nine workflows: every workflow once, in start order, with no empty last page."""
    stack = await make_stack(WORKFLOWS)
    plan = [
        ("quick", 0), ("parked", 0), ("quick", 1), ("broken", 0), ("quick", 2),
        ("parked", 1), ("quick", 3), ("broken", 1), ("quick", 4),
    ]  # fmt: skip
    started = await stack.client.start_workflows([(name, {"n": n}) for name, n in plan])
    ids = [s.workflow_id for s in started]
    by_name: dict[str, list[str]] = {}
    for (name, _n), wid in zip(plan, ids, strict=True):
        by_name.setdefault(name, []).append(wid)
    for wid in by_name["quick"] + by_name["broken"]:
        await wait_finished(stack.client, wid)
    for wid in by_name["parked"]:
        await eventually(lambda wid=wid: task_rows(stack.database_url, wid))

    async def listed(**options: Any) -> list[str]:
        return [w.id async for w in stack.client.list_workflows(**options)]

    assert await listed() == ids
    assert await listed(statuses=[WorkflowStatus.COMPLETED]) == by_name["quick"]
    assert await listed(statuses=[WorkflowStatus.FAILED, WorkflowStatus.RUNNING]) == [
        wid for wid in ids if wid not in by_name["quick"]
    ]
    assert await listed(name="parked") == by_name["parked"]
    assert await listed(name="broken", statuses=[WorkflowStatus.FAILED]) == by_name["broken"]
    assert await listed(name="parked", statuses=[WorkflowStatus.COMPLETED]) == []
    assert await listed(statuses=[WorkflowStatus.CANCELLED]) == []
    assert await listed(name="no_such_workflow") == []

    for newest_first, expected in ((False, ids), (True, ids[::-1])):
        pages: list[list[str]] = []
        tokens: list[str] = []
        token = ""
        while True:
            page, token = await stack.client.list_workflows_page(
                page_size=3, page_token=token, newest_first=newest_first
            )
            pages.append([w.id for w in page])
            tokens.append(token)
            if not token:
                break
        assert pages == [expected[0:3], expected[3:6], expected[6:9]]
        assert all(tokens[:-1]) and tokens[-1] == ""

    quick_pages = []
    token = ""
    while True:
        page, token = await stack.client.list_workflows_page(name="quick", page_size=2, page_token=token)
        quick_pages.append([(w.id, w.status, w.result) for w in page])
        if not token:
            break
    assert quick_pages == [
        [(wid, WorkflowStatus.COMPLETED, n) for n, wid in enumerate(by_name["quick"])][i : i + 2]
        for i in range(0, 5, 2)
    ]


# --------------------------------------------------------------------- ctx.now/ctx.random


async def test_now_and_random_are_recorded_once_and_replayed_unchanged(make_stack: MakeStack) -> None:
    """Replayed three times (start, after each sleep), the workflow must return the journal's values."""
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("stamps")
    finished = await wait_finished(stack.client, started.workflow_id)
    assert finished.status is WorkflowStatus.COMPLETED, finished.error

    journal = await step_rows(stack.database_url, started.workflow_id)
    assert [(s.number, s.kind, s.status) for s in journal] == [
        (0, "now", "completed"),
        (1, "random", "completed"),
        (2, "sleep", "completed"),
        (3, "sleep", "completed"),
        (4, "now", "completed"),
        (5, "random", "completed"),
    ]
    result = finished.result
    assert result["first"] == to_datetime(int(journal[0].result)).isoformat()
    assert result["draw"] == float(journal[1].result)
    assert result["later"] == to_datetime(int(journal[4].result)).isoformat()
    assert result["draw_again"] == float(journal[5].result)
    assert 0.0 <= result["draw"] < 1.0
    # The second reading was taken by a later replay, after the sleeps' timers fired.
    assert int(journal[4].result) >= journal[3].wake_at > int(journal[0].result)
    detail = await stack.client.get_workflow(started.workflow_id, include_steps=True)
    assert [s.result for s in detail.steps if s.kind in ("now", "random")] == [
        int(journal[0].result),
        float(journal[1].result),
        int(journal[4].result),
        float(journal[5].result),
    ]
