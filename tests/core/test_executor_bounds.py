"""The executor bounds every value it is given: a handler's (or the API's) hostile
retry-after is clamped, and the result is still reported (on main an infinite wait
overflowed while building the result, outside the report path: the task was never
reported and its slot leaked while heartbeats kept the lease alive)."""

from __future__ import annotations

from typing import Any

from conveyor import WorkflowContext, task_handler, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.errors import TaskRateLimited
from support import registry_of
from toolkit import MakeStack, handlers_of, wait_finished

STATE: dict[str, Any] = {}


@task_handler("limited")
async def limited(payload: Any) -> str:
    STATE["calls"] += 1
    if STATE["calls"] == 1:
        # A value no wait can honour: it must be bounded, not crash the report path.
        raise TaskRateLimited("downstream says never", retry_after=float("-inf"))
    return "through"


@workflow
async def rate_limited_once(ctx: WorkflowContext, n: int) -> Any:
    return await ctx.task("limited", n)


async def test_a_hostile_retry_after_from_a_handler_is_bounded_and_the_result_still_reported(
    make_stack: MakeStack,
) -> None:
    STATE.update(calls=0)
    stack = await make_stack(registry_of(rate_limited_once))
    stack.start_executor(handlers=handlers_of(limited), llm=False)
    started = await stack.client.start_workflow("rate_limited_once", {"n": 1})
    finished = await wait_finished(stack.client, started.workflow_id, within=30)
    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == "through"
    assert STATE["calls"] == 2
