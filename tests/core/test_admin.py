"""Operator RPCs: FailPendingTasks, BumpEpoch, ClearTaskQueue, ClearReplayQueue, Diagnose.

Each action must do exactly what it says (this shard, all shards, at most
``limit``) and leave no workflow stranded: every workflow it touches finishes
(failed or cancelled), and ``Diagnose`` finds no broken invariant afterwards. The
database is read directly to show what is really left behind.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from conveyor import RetryPolicy, WorkflowContext, task_handler, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.store.schema import replay_queue, workflows
from conveyor.errors import InvalidArgument
from conveyor.v1 import admin_service_pb2, common_pb2
from support import Stack, eventually, registry_of
from toolkit import (
    MakeStack,
    RawStubs,
    execute,
    fetch,
    handlers_of,
    replay_rows,
    restart_coordinator,
    rpc_error,
    statuses,
    task_rows,
    wait_finished,
)

SHARDS = 4
NO_RETRY = RetryPolicy(max_attempts=1, initial_backoff=0.05)


@workflow
async def one_task(ctx: WorkflowContext, kind: str, item: int) -> Any:
    return await ctx.task(kind, item, retry=NO_RETRY)


@workflow
async def two_tasks(ctx: WorkflowContext, kind: str, item: int) -> list[Any]:
    return list(
        await asyncio.gather(
            ctx.task(kind, [item, "a"], name="a", retry=NO_RETRY),
            ctx.task(kind, [item, "b"], name="b", retry=NO_RETRY),
        )
    )


@workflow
async def napper(ctx: WorkflowContext, item: int) -> int:
    await ctx.sleep(1.0)
    return item


@workflow
async def instant(ctx: WorkflowContext, item: int) -> int:
    return item


@workflow
async def broken(ctx: WorkflowContext, item: int) -> int:
    raise ValueError(f"broken #{item}")


WORKFLOWS = registry_of(one_task, two_tasks, napper, instant, broken)
#: What the coordinator runs after a "deploy" that forgot the module defining ``napper``.
WITHOUT_NAPPER = registry_of(one_task, two_tasks, instant, broken)


async def start_queued(
    stack: Stack, count: int, *, workflow_name: str = "one_task", kind: str = "unserved"
) -> list[str]:
    """Start ``count`` workflows whose tasks no executor serves; returns their ids once all are queued."""
    started = await stack.client.start_workflows(
        [(workflow_name, {"kind": kind, "item": i}) for i in range(count)]
    )
    ids = [s.workflow_id for s in started]
    per_workflow = 2 if workflow_name == "two_tasks" else 1

    async def all_queued() -> bool:
        return len(await task_rows(stack.database_url)) == per_workflow * count

    await eventually(all_queued)
    return ids


async def shards_of(stack: Stack, workflow_ids: list[str]) -> dict[str, int]:
    return {wid: (await stack.client.get_workflow(wid)).shard for wid in workflow_ids}


async def park_in_replay_queue(stack: Stack, count: int) -> list[str]:
    """Leave ``count`` workflows waiting in the replay queue for good.

    They start a one-second sleep; the coordinator is then restarted without their
    code (an operator's botched deploy), so when their timers fire they are queued
    for a replay nobody can run. That is the situation ClearReplayQueue exists for.
    """
    started = await stack.client.start_workflows([("napper", {"item": i}) for i in range(count)])
    ids = [s.workflow_id for s in started]

    async def all_sleeping() -> bool:
        return all([(await stack.client.get_workflow(wid)).step_count == 1 for wid in ids])

    await eventually(all_sleeping)
    await restart_coordinator(stack, WITHOUT_NAPPER)

    async def all_parked() -> bool:
        return (await stack.client.diagnose()).replay_queue_depth == count

    await eventually(all_parked)
    return ids


async def assert_no_violations(stack: Stack) -> None:
    report = await stack.client.diagnose()
    assert [(v.kind, list(v.workflow_ids)) for v in report.violations] == []


# ------------------------------------------------------------------------ FailPendingTasks


async def test_fail_pending_tasks_of_one_shard_fails_only_that_shards_workflows(
    make_stack: MakeStack,
) -> None:
    """With no executor at all, the operator can still finish the stuck workflows of one shard."""
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = await start_queued(stack, 12)
    shard_by_id = await shards_of(stack, ids)
    target = shard_by_id[ids[0]]
    on_target = [wid for wid in ids if shard_by_id[wid] == target]
    elsewhere = [wid for wid in ids if shard_by_id[wid] != target]

    assert await stack.client.fail_pending_tasks(target) == len(on_target)

    for wid in on_target:
        finished = await wait_finished(stack.client, wid)
        assert finished.status is WorkflowStatus.FAILED
        assert "step 0 ('unserved') failed" in finished.error
        assert "operator" in finished.error
    assert await statuses(stack.client, elsewhere) == [WorkflowStatus.RUNNING] * len(elsewhere)
    remaining = await task_rows(stack.database_url)
    assert sorted(row.workflow_id for row in remaining) == sorted(elsewhere)
    report = await stack.client.diagnose()
    assert report.shards[target].queued_tasks == 0
    assert sum(s.queued_tasks for s in report.shards) == len(elsewhere)
    await assert_no_violations(stack)


async def test_fail_pending_tasks_on_all_shards_honours_the_limit_oldest_first(make_stack: MakeStack) -> None:
    """A limit fails the oldest queued tasks first (FIFO order), and a second call takes the rest."""
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = await start_queued(stack, 6)

    assert (
        await stack.client.fail_pending_tasks(None, limit=2, reason="bad batch, says the on-call operator")
        == 2
    )
    for wid in ids[:2]:
        finished = await wait_finished(stack.client, wid)
        assert finished.status is WorkflowStatus.FAILED
        assert "bad batch, says the on-call operator" in finished.error
    assert await statuses(stack.client, ids[2:]) == [WorkflowStatus.RUNNING] * 4

    assert await stack.client.fail_pending_tasks(None) == 4
    for wid in ids[2:]:
        finished = await wait_finished(stack.client, wid)
        assert finished.status is WorkflowStatus.FAILED
        assert "operator" in finished.error
    assert await task_rows(stack.database_url) == []
    assert await stack.client.fail_pending_tasks(None) == 0
    report = await stack.client.diagnose()
    assert dict(report.workflows_by_status) == {"failed": 6}
    await assert_no_violations(stack)


async def test_fail_pending_tasks_leaves_claimed_tasks_running(make_stack: MakeStack) -> None:
    """Only queued tasks are failed: the one an executor holds finishes normally and is recorded."""
    release = asyncio.Event()

    @task_handler("held")
    async def held(payload: Any) -> Any:
        await release.wait()
        return {"done": payload}

    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = await start_queued(stack, 3, kind="held")
    stack.start_executor(handlers=handlers_of(held), llm=False, concurrency=1)

    async def first_claimed() -> bool:
        rows = await task_rows(stack.database_url)
        return [row.workflow_id for row in rows if row.claimed_by] == ids[:1]

    await eventually(first_claimed)
    assert await stack.client.fail_pending_tasks(None) == 2
    for wid in ids[1:]:
        assert (await wait_finished(stack.client, wid)).status is WorkflowStatus.FAILED
    assert (await stack.client.get_workflow(ids[0])).status is WorkflowStatus.RUNNING

    release.set()
    finished = await wait_finished(stack.client, ids[0])
    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == {"done": 0}
    await assert_no_violations(stack)


# ------------------------------------------------------------------------------ BumpEpoch


async def test_bump_epoch_returns_the_new_epoch_and_drains_every_live_executor(make_stack: MakeStack) -> None:
    """Both executors of the old epoch are told to drain and exit 0; a later one joins the new epoch."""

    @task_handler("noop")
    async def noop(payload: Any) -> Any:
        return payload

    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    before = (await stack.client.diagnose()).epoch
    stack.start_executor(handlers=handlers_of(noop), llm=False, executor_id="old-a")
    stack.start_executor(handlers=handlers_of(noop), llm=False, executor_id="old-b")

    async def both_live() -> bool:
        report = await stack.client.diagnose()
        return sorted(e.executor_id for e in report.executors if e.state == "live") == ["old-a", "old-b"]

    await eventually(both_live)
    response = await stack.client.bump_epoch("rolling deploy")
    assert (response.epoch, response.draining_executors) == (before + 1, 2)

    exit_codes = await asyncio.wait_for(asyncio.gather(*(task for _, task in stack.executors)), 10)
    assert exit_codes == [0, 0]
    stack.start_executor(handlers=handlers_of(noop), llm=False, executor_id="new-c")

    async def only_new_live() -> Any:
        report = await stack.client.diagnose()
        live = [(e.executor_id, e.epoch) for e in report.executors if e.state == "live"]
        return report if live == [("new-c", before + 1)] else None

    report = await eventually(only_new_live)
    assert report.epoch == before + 1
    run = await stack.client.start_workflow("one_task", {"kind": "noop", "item": 5})
    assert (await wait_finished(stack.client, run.workflow_id)).result == 5

    second = await stack.client.bump_epoch()
    assert (second.epoch, second.draining_executors) == (before + 2, 1)


# ------------------------------------------------------------------------- ClearTaskQueue


async def test_clear_task_queue_per_shard_and_with_limit_cancels_every_affected_workflow(
    make_stack: MakeStack,
) -> None:
    """Clearing part of a workflow's tasks cancels all of it: none is left waiting on a deleted task."""
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = await start_queued(stack, 12, workflow_name="two_tasks")
    shard_by_id = await shards_of(stack, ids)
    target = shard_by_id[ids[-1]]
    on_target = [wid for wid in ids if shard_by_id[wid] == target]
    rest = [wid for wid in ids if shard_by_id[wid] != target]

    response = await stack.client.clear_task_queue(target)
    assert (response.cleared_tasks, response.cancelled_workflows) == (2 * len(on_target), len(on_target))
    for wid in on_target:
        workflow_record = await stack.client.get_workflow(wid, include_steps=True)
        assert workflow_record.status is WorkflowStatus.CANCELLED
        assert "task queue cleared by an operator" in workflow_record.error
        assert {s.status for s in workflow_record.steps} == {"cancelled"}
    assert await statuses(stack.client, rest) == [WorkflowStatus.RUNNING] * len(rest)
    await assert_no_violations(stack)

    # limit=1 deletes one task of the oldest remaining workflow; cancelling it removes its sibling too.
    response = await stack.client.clear_task_queue(None, limit=1)
    assert (response.cleared_tasks, response.cancelled_workflows) == (1, 1)
    assert (await stack.client.get_workflow(rest[0])).status is WorkflowStatus.CANCELLED
    assert await task_rows(stack.database_url, rest[0]) == []
    assert await statuses(stack.client, rest[1:]) == [WorkflowStatus.RUNNING] * len(rest[1:])
    await assert_no_violations(stack)

    response = await stack.client.clear_task_queue(None)
    assert (response.cleared_tasks, response.cancelled_workflows) == (2 * len(rest[1:]), len(rest[1:]))
    assert await task_rows(stack.database_url) == []
    report = await stack.client.diagnose()
    assert dict(report.workflows_by_status) == {"cancelled": 12}
    assert list(report.violations) == []


async def test_clear_task_queue_removes_claimed_tasks_and_rejects_their_late_results(
    make_stack: MakeStack,
) -> None:
    """A task an executor is running is cleared too; its late result is stale and changes nothing."""
    release = asyncio.Event()

    @task_handler("held")
    async def held(payload: Any) -> Any:
        await release.wait()
        return payload

    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    (wid,) = await start_queued(stack, 1, kind="held")
    stack.start_executor(handlers=handlers_of(held), llm=False)

    async def claimed() -> bool:
        return any(row.claimed_by for row in await task_rows(stack.database_url))

    await eventually(claimed)
    response = await stack.client.clear_task_queue(None)
    assert (response.cleared_tasks, response.cancelled_workflows) == (1, 1)
    release.set()

    async def rejected() -> bool:
        return (await stack.client.diagnose()).rejected_stale_results == 1

    await eventually(rejected)
    workflow_record = await stack.client.get_workflow(wid, include_steps=True)
    assert workflow_record.status is WorkflowStatus.CANCELLED
    assert [s.status for s in workflow_record.steps] == ["cancelled"]
    await assert_no_violations(stack)


# ----------------------------------------------------------------------- ClearReplayQueue


async def test_clear_replay_queue_per_shard_with_limit_and_all_cancels_the_workflows(
    make_stack: MakeStack,
) -> None:
    """Entries nobody can replay are removed as asked, and their workflows end CANCELLED, not stranded."""
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = await park_in_replay_queue(stack, 10)
    shard_by_id = await shards_of(stack, ids)
    target = shard_by_id[ids[0]]
    on_target = [wid for wid in ids if shard_by_id[wid] == target]
    rest = [wid for wid in ids if shard_by_id[wid] != target]
    report = await stack.client.diagnose()
    assert {v.kind for v in report.violations} == {"unregistered_workflow"}

    response = await stack.client.clear_replay_queue(target)
    assert (response.cleared_entries, response.cancelled_workflows) == (len(on_target), len(on_target))
    for wid in on_target:
        workflow_record = await stack.client.get_workflow(wid)
        assert workflow_record.status is WorkflowStatus.CANCELLED
        assert "replay queue cleared by an operator" in workflow_record.error
    assert sorted(row.workflow_id for row in await replay_rows(stack.database_url)) == sorted(rest)

    response = await stack.client.clear_replay_queue(None, limit=1, reason="drop the oldest")
    assert (response.cleared_entries, response.cancelled_workflows) == (1, 1)
    oldest = await stack.client.get_workflow(rest[0])
    assert (oldest.status, oldest.error) == (WorkflowStatus.CANCELLED, "drop the oldest")
    assert await statuses(stack.client, rest[1:]) == [WorkflowStatus.RUNNING] * len(rest[1:])

    response = await stack.client.clear_replay_queue(None)
    assert (response.cleared_entries, response.cancelled_workflows) == (len(rest) - 1, len(rest) - 1)
    assert await replay_rows(stack.database_url) == []
    report = await stack.client.diagnose()
    assert report.replay_queue_depth == 0
    assert dict(report.workflows_by_status) == {"cancelled": 10}
    assert list(report.violations) == []


# -------------------------------------------------------------------------------- Diagnose


async def test_diagnose_reports_queues_executors_and_workflows_by_status(make_stack: MakeStack) -> None:
    """Per-shard depth and oldest-task age, leases, epochs and status counts, all matching the database."""

    @task_handler("other")
    async def other(payload: Any) -> Any:
        return payload

    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    queued = await start_queued(stack, 6)
    done = await stack.client.start_workflow("instant", {"item": 1})
    failed = await stack.client.start_workflow("broken", {"item": 2})
    assert (await wait_finished(stack.client, done.workflow_id)).status is WorkflowStatus.COMPLETED
    assert (await wait_finished(stack.client, failed.workflow_id)).status is WorkflowStatus.FAILED
    await stack.client.cancel_workflow(queued[-1], "no longer needed")
    executor = stack.start_executor(
        handlers=handlers_of(other), llm=False, executor_id="diag-exec", concurrency=7
    )

    async def leased() -> Any:
        report = await stack.client.diagnose()
        return report if [e.executor_id for e in report.executors] == ["diag-exec"] else None

    report = await eventually(leased)
    assert report.shard_count == SHARDS
    assert [s.shard for s in report.shards] == list(range(SHARDS))
    assert dict(report.workflows_by_status) == {"running": 5, "completed": 1, "failed": 1, "cancelled": 1}

    tasks_left = await task_rows(stack.database_url)
    depth = Counter(row.shard for row in tasks_left)
    oldest = {
        row.shard: row.workflow_created_at for row in sorted(tasks_left, key=lambda r: -r.workflow_created_at)
    }
    generated_us = report.generated_at.ToMicroseconds()
    for shard in report.shards:
        assert shard.queued_tasks == depth.get(shard.shard, 0)
        assert (shard.delayed_tasks, shard.claimed_tasks, shard.replay_queue_depth) == (0, 0, 0)
        assert shard.executor_id == "diag-exec"
        if shard.shard in oldest:
            age = shard.oldest_queued_age.ToMicroseconds()
            assert abs(age - (generated_us - oldest[shard.shard])) <= 1
        else:
            assert not shard.HasField("oldest_queued_age")
    assert report.replay_queue_depth == 0

    (info,) = report.executors
    assert info.executor_id == executor.config.executor_id
    assert (info.epoch, info.state, info.capacity) == (report.epoch, "live", 7)
    assert list(info.shards) == list(range(SHARDS))
    assert list(info.task_kinds) == ["other"]
    assert info.claimed_tasks == 0
    assert list(report.violations) == []


async def test_diagnose_counts_the_replay_queue_and_names_a_workflow_whose_replay_row_was_lost(
    make_stack: MakeStack,
) -> None:
    """Deleting a replay-queue row by hand breaks the invariant; Diagnose must name exactly that workflow."""
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = await park_in_replay_queue(stack, 5)
    shard_by_id = await shards_of(stack, ids)
    report = await stack.client.diagnose()
    assert report.replay_queue_depth == 5
    per_shard = Counter(shard_by_id.values())
    assert [s.replay_queue_depth for s in report.shards] == [per_shard.get(n, 0) for n in range(SHARDS)]
    assert [v.kind for v in report.violations] == ["unregistered_workflow"]

    victim = ids[2]
    assert (
        await execute(stack.database_url, sa.delete(replay_queue).where(replay_queue.c.workflow_id == victim))
        == 1
    )

    report = await stack.client.diagnose()
    by_kind = {v.kind: v for v in report.violations}
    # Both halves of the invariant: nothing in progress, and a fired timer never delivered.
    assert set(by_kind) == {"running_without_progress", "undelivered_without_replay", "unregistered_workflow"}
    for kind in ("running_without_progress", "undelivered_without_replay"):
        assert list(by_kind[kind].workflow_ids) == [victim]
        assert by_kind[kind].count == 1
        assert by_kind[kind].description
    assert victim not in by_kind["unregistered_workflow"].workflow_ids
    assert report.replay_queue_depth == 4
    (row,) = await fetch(stack.database_url, sa.select(workflows.c.status).where(workflows.c.id == victim))
    assert row.status == "running"


# --------------------------------------------------------------------- invalid requests


@pytest.mark.parametrize("rpc", ["FailPendingTasks", "ClearTaskQueue", "ClearReplayQueue"])
async def test_admin_actions_without_a_valid_shard_selector_or_limit_are_invalid_and_change_nothing(
    make_stack: MakeStack, rpc: str
) -> None:
    """An operator's typo must not act on every shard: each malformed request is refused whole."""
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = await start_queued(stack, 3)
    request_type = getattr(admin_service_pb2, f"{rpc}Request")
    bad_requests = {
        "no selector": (request_type(), "choose the shards"),
        "all_shards false": (
            request_type(shards=common_pb2.ShardSelector(all_shards=False)),
            "choose the shards",
        ),
        "shard out of range": (
            request_type(shards=common_pb2.ShardSelector(shard=SHARDS)),
            f"shard {SHARDS} does not exist",
        ),
        "negative shard": (
            request_type(shards=common_pb2.ShardSelector(shard=-1)),
            "shard -1 does not exist",
        ),
        "negative limit": (
            request_type(shards=common_pb2.ShardSelector(all_shards=True), limit=-1),
            "limit must not be negative",
        ),
    }
    async with RawStubs(stack.server.address) as stubs:
        for label, (request, message) in bad_requests.items():
            error = await rpc_error(getattr(stubs.admin, rpc)(request))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, label
            assert message in (error.details() or ""), (label, error.details())
        error = await rpc_error(stubs.admin.Diagnose(admin_service_pb2.DiagnoseRequest(max_violations=-1)))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidArgument, match="does not exist"):
        await stack.client.fail_pending_tasks(SHARDS + 10)

    assert await statuses(stack.client, ids) == [WorkflowStatus.RUNNING] * 3
    assert len(await task_rows(stack.database_url)) == 3
    await assert_no_violations(stack)
