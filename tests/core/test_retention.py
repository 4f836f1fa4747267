"""Retention: PurgeWorkflows and the --retention loop delete finished workflows with every row
of theirs, in independent batches, and never touch a running workflow."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest

from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator import retention as retention_module
from conveyor.coordinator.store.retention import PURGED_WITH_WORKFLOW
from conveyor.coordinator.store.schema import replay_queue, steps, tasks, workflow_counts, workflows
from conveyor.errors import InvalidArgument
from support import Stack, eventually, registry_of
from toolkit import MakeStack, fetch, restart_coordinator, snapshot, task_rows, wait_finished

SHARDS = 4


@workflow
async def quick(ctx: WorkflowContext, item: int) -> int:
    ctx.now()  # a journal step, so purging has steps to delete
    await ctx.sleep(0.01)
    return item


@workflow
async def broken(ctx: WorkflowContext, item: int) -> int:
    ctx.random()
    raise ValueError(f"broken #{item}")


@workflow
async def parked(ctx: WorkflowContext, item: int) -> Any:
    return await ctx.task("unserved", item)


WORKFLOWS = registry_of(quick, broken, parked)


def far_future() -> datetime:
    return datetime.now(UTC) + timedelta(days=1)


async def start_mix(stack: Stack, *, quick_count: int = 4, broken_count: int = 2) -> dict[str, list[str]]:
    """Completed, failed, cancelled and running workflows (the running ones with a queued task)."""
    client = stack.client
    assert client is not None
    done = [s.workflow_id for s in await client.start_workflows([("quick", [i]) for i in range(quick_count)])]
    failed = [
        s.workflow_id for s in await client.start_workflows([("broken", [i]) for i in range(broken_count)])
    ]
    running = [s.workflow_id for s in await client.start_workflows([("parked", [i]) for i in range(3)])]
    for workflow_id in done + failed:
        await wait_finished(client, workflow_id)

    async def queued() -> bool:
        return len(await task_rows(stack.database_url)) == 3

    await eventually(queued)
    cancelled = running[0]
    await client.cancel_workflow(cancelled, "not needed")
    return {"completed": done, "failed": failed, "cancelled": [cancelled], "running": running[1:]}


async def rows_of(url: str, workflow_ids: list[str]) -> dict[str, int]:
    """How many rows each per-workflow table (and ``workflows``) holds for ``workflow_ids``."""
    counts = {}
    for table in (*PURGED_WITH_WORKFLOW, workflows):
        column = table.c.id if table is workflows else table.c.workflow_id
        (count,) = (await fetch(url, sa.select(sa.func.count()).where(column.in_(workflow_ids))))[0]
        counts[table.name] = count
    return counts


async def counts_match_the_table(url: str) -> None:
    """``workflow_counts`` (kept by triggers) equals counting ``workflows`` itself."""
    kept = {
        (row.name, row.status): row.total for row in await fetch(url, sa.select(workflow_counts)) if row.total
    }
    counted = {
        (row.name, row.status): row.total
        for row in await fetch(
            url,
            sa.select(workflows.c.name, workflows.c.status, sa.func.count().label("total")).group_by(
                workflows.c.name, workflows.c.status
            ),
        )
    }
    assert kept == counted


async def test_purge_deletes_finished_workflows_with_all_their_rows_and_keeps_running_ones(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = await start_mix(stack)
    finished = ids["completed"] + ids["failed"] + ids["cancelled"]
    assert (await rows_of(stack.database_url, finished))[steps.name] > 0
    running_before = await fetch(
        stack.database_url, sa.select(steps).where(steps.c.workflow_id.in_(ids["running"]))
    )

    outcome = await stack.client.purge_workflows(far_future())

    assert (outcome.matched, outcome.purged) == (len(finished), len(finished))
    assert set(outcome.sample_workflow_ids) == set(finished)
    assert set((await rows_of(stack.database_url, finished)).values()) == {0}
    # The running workflows are whole: their rows, their queued tasks, their status.
    after = await fetch(stack.database_url, sa.select(steps).where(steps.c.workflow_id.in_(ids["running"])))
    assert after == running_before
    assert len(await task_rows(stack.database_url)) == 2
    counts = await stack.client.count_workflows()
    assert counts[WorkflowStatus.RUNNING] == 2
    assert counts[WorkflowStatus.COMPLETED] == counts[WorkflowStatus.FAILED] == 0
    assert counts[WorkflowStatus.CANCELLED] == 0
    await counts_match_the_table(stack.database_url)
    assert list((await stack.client.diagnose()).violations) == []
    # The running ones still finish normally afterwards.
    await stack.client.cancel_workflow(ids["running"][0])
    assert (await stack.client.get_workflow(ids["running"][0])).status is WorkflowStatus.CANCELLED


async def test_a_dry_run_counts_and_changes_nothing(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = await start_mix(stack)
    before = await snapshot(stack.database_url)

    preview = await stack.client.purge_workflows(far_future(), dry_run=True)

    assert (preview.matched, preview.purged) == (7, 0)
    assert set(preview.sample_workflow_ids) == set(ids["completed"] + ids["failed"] + ids["cancelled"])
    assert await snapshot(stack.database_url) == before


async def test_status_limit_and_time_bound_select_what_is_purged(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = await start_mix(stack)
    client = stack.client

    # Nothing finished before the workflows started.
    assert (await client.purge_workflows(datetime.now(UTC) - timedelta(days=1))).matched == 0
    only_failed = await client.purge_workflows(far_future(), statuses=[WorkflowStatus.FAILED])
    assert only_failed.purged == 2
    assert (await rows_of(stack.database_url, ids["failed"]))[workflows.name] == 0
    assert (await rows_of(stack.database_url, ids["completed"]))[workflows.name] == 4

    # A limit takes the workflows that finished first (ties in either order).
    finished_at = {
        row.id: row.completed_at
        for row in await fetch(
            stack.database_url,
            sa.select(workflows.c.id, workflows.c.completed_at).where(workflows.c.id.in_(ids["completed"])),
        )
    }
    first_two = await client.purge_workflows(far_future(), statuses=[WorkflowStatus.COMPLETED], limit=2)
    assert first_two.purged == 2
    left = {row.id for row in await fetch(stack.database_url, sa.select(workflows.c.id))}
    purged = set(ids["completed"]) - left
    assert len(purged) == 2
    assert max(finished_at[wid] for wid in purged) <= min(
        finished_at[wid] for wid in set(ids["completed"]) & left
    )
    await counts_match_the_table(stack.database_url)


async def test_running_is_not_a_status_that_can_be_purged(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = await start_mix(stack)
    with pytest.raises(InvalidArgument, match="only finished workflows"):
        await stack.client.purge_workflows(far_future(), statuses=[WorkflowStatus.RUNNING])
    with pytest.raises(InvalidArgument, match="limit"):
        await stack.client.purge_workflows(far_future(), limit=-1)
    # However far ahead the bound, running workflows stay.
    await stack.client.purge_workflows(datetime(9999, 1, 1, tzinfo=UTC))
    assert (await rows_of(stack.database_url, ids["running"]))[workflows.name] == 2


async def test_a_restart_between_batches_loses_nothing_and_the_purge_completes_later(
    make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One workflow per batch, and a long rest after each: the purge is stopped between two.
    monkeypatch.setattr(retention_module, "MIN_PAUSE", 300.0)
    stack = await make_stack(WORKFLOWS, shards=SHARDS, retention_batch_size=1)
    ids = await start_mix(stack, quick_count=6)
    finished = ids["completed"] + ids["failed"] + ids["cancelled"]

    purge = asyncio.create_task(stack.client.purge_workflows(far_future()))
    await eventually(lambda: stack.coordinator.stats.workflows_purged >= 1)
    await stack.stop_coordinator()
    with pytest.raises(Exception):  # noqa: B017 - the call dies with the coordinator, however it says so
        await purge

    # Each workflow is either whole or entirely gone: the batch committed, the next never began.
    left = {row.id for row in await fetch(stack.database_url, sa.select(workflows.c.id))}
    assert len(set(finished) - left) == 1
    for workflow_id in finished:
        rows = await rows_of(stack.database_url, [workflow_id])
        if workflow_id in left:
            assert rows[steps.name] > 0
        else:
            assert set(rows.values()) == {0}
    await counts_match_the_table(stack.database_url)

    # The next coordinator purges the rest in the background (retention on, no rest).
    monkeypatch.setattr(retention_module, "MIN_PAUSE", 0.0)
    stack.config_overrides.update(retention=1.0, retention_interval=0.2)
    await restart_coordinator(stack)

    async def all_finished_gone() -> bool:
        return (await rows_of(stack.database_url, finished))[workflows.name] == 0

    await eventually(all_finished_gone)
    assert set((await rows_of(stack.database_url, finished)).values()) == {0}
    assert (await rows_of(stack.database_url, ids["running"]))[workflows.name] == 2
    await counts_match_the_table(stack.database_url)
    assert list((await stack.client.diagnose()).violations) == []


async def test_the_retention_loop_purges_expired_workflows_in_the_background(make_stack: MakeStack) -> None:
    stack = await make_stack(
        WORKFLOWS, shards=SHARDS, retention=1.0, retention_interval=0.2, retention_batch_size=2
    )
    ids = await start_mix(stack)
    finished = ids["completed"] + ids["failed"] + ids["cancelled"]

    async def all_finished_gone() -> bool:
        return (await rows_of(stack.database_url, finished))[workflows.name] == 0

    await eventually(all_finished_gone)
    assert set((await rows_of(stack.database_url, finished)).values()) == {0}
    assert stack.coordinator.stats.workflows_purged == len(finished)
    exported = generate_latest(stack.coordinator.metrics.registry).decode()
    assert f"conveyor_workflows_purged_total {float(len(finished))}" in exported
    # Workflows finishing later are purged too, once they expire.
    later = (await stack.client.start_workflow("quick", [99])).workflow_id
    await wait_finished(stack.client, later)

    async def later_gone() -> bool:
        return (await rows_of(stack.database_url, [later]))[workflows.name] == 0

    await eventually(later_gone)
    assert (await rows_of(stack.database_url, ids["running"]))[workflows.name] == 2
    assert (await fetch(stack.database_url, sa.select(replay_queue))) == []
    assert len(await fetch(stack.database_url, sa.select(tasks))) == 2
    await counts_match_the_table(stack.database_url)
