"""Held tasks across reconnects and lease expiry: one rule.

An executor whose lease expired while it still ran a task (a long GC pause, a VM
pause, a slow reconnect) gets that task back on its new stream, re-claimed for it
with a newer fencing token. The rule: on reconnect the coordinator cancels the
attempt it took back (CancelTasks); a newer delivery of a task the executor still
holds is never dropped: a running (uncancelled) attempt or a held result adopts the
newer token, a cancelled attempt winding down is followed by the new one (a result
already sent with the older token and answered STALE is re-sent with the newer one). Tested for both
orders: the lease expiring and then the executor reconnecting, and the executor
reconnecting first and its new lease expiring afterwards.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor import RetryPolicy, WorkflowContext, task_handler, workflow
from conveyor.client.models import WorkflowStatus
from support import Stack, eventually, registry_of
from toolkit import MakeStack, handlers_of, task_rows, wait_finished

#: The current test's gate and call count (an Event belongs to one event loop).
STATE: dict[str, Any] = {}


@task_handler("held")
async def held(payload: Any) -> str:
    STATE["calls"] += 1
    await STATE["release"].wait()
    return f"done {payload}"


@workflow
async def hold(ctx: WorkflowContext, n: int) -> Any:
    return await ctx.task("held", n, retry=RetryPolicy(max_attempts=3, initial_backoff=0.05))


async def start(make_stack: MakeStack) -> tuple[Stack, str]:
    STATE.update(calls=0, release=asyncio.Event())
    stack = await make_stack(registry_of(hold))
    stack.start_executor(handlers=handlers_of(held), llm=False, executor_id="holder", concurrency=2)
    started = await stack.client.start_workflow("hold", {"n": 1})
    await eventually(lambda: STATE["calls"] == 1)
    return stack, started.workflow_id


async def miss_the_lease(stack: Stack) -> None:
    """Lose the executor's heartbeats (a pause longer than the lease) until its lease expires."""
    coordinator = stack.coordinator
    expired = coordinator.stats.leases_expired
    coordinator.executor_alive = lambda session: None  # heartbeats arrive and are lost
    try:
        await eventually(lambda: coordinator.stats.leases_expired > expired, timeout=30)
    finally:
        del coordinator.executor_alive


async def finishes_once(stack: Stack, workflow_id: str) -> None:
    # The re-claim reached the executor (attempt 2 is leased to it again) before the result exists.
    await eventually(lambda: _leased_again(stack, workflow_id), timeout=30)
    STATE["release"].set()
    finished = await wait_finished(stack.client, workflow_id, within=30)
    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == "done 1"
    workflow_record = await stack.client.get_workflow(workflow_id, include_steps=True)
    assert workflow_record.steps[0].attempt == 2  # the lost lease spent one attempt
    # The attempt taken back was cancelled on reconnect (CancelTasks) or, if the re-claim
    # found it still running, carried on under the newer token: at most one re-run.
    assert STATE["calls"] <= 2


async def _leased_again(stack: Stack, workflow_id: str) -> bool:
    rows = await task_rows(stack.database_url, workflow_id)
    return len(rows) == 1 and rows[0].attempt == 2 and rows[0].claimed_by == "holder"


async def test_lease_expires_then_the_executor_reconnects_and_reports_with_the_newer_token(
    make_stack: MakeStack,
) -> None:
    stack, workflow_id = await start(make_stack)
    await miss_the_lease(stack)  # the stream is ended; the executor reconnects holding the task
    await finishes_once(stack, workflow_id)


async def test_executor_reconnects_then_its_lease_expires_and_it_reports_with_the_newer_token(
    make_stack: MakeStack,
) -> None:
    stack, workflow_id = await start(make_stack)
    first = stack.coordinator.sessions.get("holder")
    first.close_stream()  # a network blip: it reconnects in time
    await eventually(lambda: stack.coordinator.sessions.get("holder") not in (None, first))
    # Still its task after the reconnect (listed as held), under the original claim.
    [row] = await task_rows(stack.database_url, workflow_id)
    assert (row.attempt, row.claimed_by) == (1, "holder")
    await miss_the_lease(stack)
    await finishes_once(stack, workflow_id)
