"""CancelWorkflows: server-side bulk cancel by filter, oldest first, with a dry run that changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.errors import InvalidArgument
from conveyor.v1 import admin_service_pb2
from support import eventually, registry_of
from toolkit import MakeStack, RawStubs, rpc_error, snapshot, statuses, task_rows

SHARDS = 4


@workflow
async def parked(ctx: WorkflowContext, item: int) -> Any:
    return await ctx.task("unserved", item)


@workflow
async def other(ctx: WorkflowContext, item: int) -> Any:
    return await ctx.task("unserved", item)


WORKFLOWS = registry_of(parked, other)


async def start_parked(stack: Any, names: list[str]) -> list[str]:
    started = await stack.client.start_workflows([(name, {"item": i}) for i, name in enumerate(names)])
    ids = [s.workflow_id for s in started]

    async def all_queued() -> bool:
        return len(await task_rows(stack.database_url)) >= len(ids)

    await eventually(all_queued)
    return ids


async def test_a_dry_run_counts_the_matches_and_changes_nothing(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = await start_parked(stack, ["parked"] * 5 + ["other"] * 2)
    before = await snapshot(stack.database_url)

    preview = await stack.client.cancel_workflows(None, name="parked", dry_run=True)

    assert (preview.matched, preview.cancelled, preview.sample_workflow_ids) == (5, 0, tuple(ids[:5]))
    assert await snapshot(stack.database_url) == before


async def test_cancel_by_name_and_limit_takes_the_oldest_first_and_leaves_the_rest(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    ids = await start_parked(stack, ["parked"] * 5 + ["other"] * 2)

    outcome = await stack.client.cancel_workflows(None, name="parked", limit=3, reason="bad prompt")

    assert (outcome.matched, outcome.cancelled) == (3, 3)
    assert await statuses(stack.client, ids) == [WorkflowStatus.CANCELLED] * 3 + [WorkflowStatus.RUNNING] * 4
    assert (await stack.client.get_workflow(ids[0])).error == "bad prompt"
    # Their tasks left the queue with them; the others' are still there.
    assert sorted(row.workflow_id for row in await task_rows(stack.database_url)) == sorted(ids[3:])
    assert list((await stack.client.diagnose()).violations) == []


async def test_cancel_by_shard_and_start_time_touches_only_those(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    early = await start_parked(stack, ["parked"] * 6)
    boundary = datetime.now(UTC)
    late = await start_parked(stack, ["parked"] * 2)
    shard = (await stack.client.get_workflow(early[0])).shard
    on_shard = [wid for wid in early if (await stack.client.get_workflow(wid)).shard == shard]

    outcome = await stack.client.cancel_workflows(shard, started_before=boundary)
    assert outcome.cancelled == len(on_shard)
    assert {wid for wid in early + late if (await stack.client.get_workflow(wid)).status.finished} == set(
        on_shard
    )

    later = await stack.client.cancel_workflows(None, started_after=boundary)
    assert later.cancelled == 2
    assert await statuses(stack.client, late) == [WorkflowStatus.CANCELLED] * 2


async def test_nothing_matching_cancels_nothing(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    await start_parked(stack, ["parked"])
    future = datetime.now(UTC) + timedelta(hours=1)

    outcome = await stack.client.cancel_workflows(None, name="other")
    after = await stack.client.cancel_workflows(None, started_after=future)

    assert (outcome.matched, outcome.cancelled, after.matched) == (0, 0, 0)


async def test_a_bad_filter_is_invalid_and_changes_nothing(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=SHARDS)
    await start_parked(stack, ["parked"] * 2)
    before = await snapshot(stack.database_url)

    with pytest.raises(InvalidArgument, match=f"shard {SHARDS} does not exist"):
        await stack.client.cancel_workflows(SHARDS)
    with pytest.raises(InvalidArgument, match="limit must not be negative"):
        await stack.client.cancel_workflows(None, limit=-1)
    async with RawStubs(stack.server.address) as stubs:
        error = await rpc_error(
            stubs.admin.CancelWorkflows(admin_service_pb2.CancelWorkflowsRequest(name="parked"))
        )
    assert error.code().name == "INVALID_ARGUMENT"
    assert "choose the shards to act on" in (error.details() or "")
    assert await snapshot(stack.database_url) == before
