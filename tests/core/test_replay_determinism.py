"""Replay through a real coordinator: gather over multi-step branches works, and code that
dropped journaled steps fails as non-determinism (issue 9, items 8 and 9), on both databases."""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor import RetryPolicy, WorkflowContext, task_handler, workflow
from conveyor.client.models import WorkflowStatus
from support import eventually, registry_of
from toolkit import MakeStack, handlers_of, restart_coordinator, step_rows, wait_finished

NO_RETRY = RetryPolicy(max_attempts=1, initial_backoff=0.05)


async def branch(ctx: WorkflowContext, name: str, length: int) -> list[Any]:
    results: list[Any] = []
    for step in range(length):
        before = results[-1].split()[0] if results else "start"
        results.append(await ctx.task("echo", f"{name}{step} after {before}", name=f"{name}{step}"))
    return results


@workflow
async def fan_out(ctx: WorkflowContext) -> list[Any]:
    inner = asyncio.gather(branch(ctx, "c", 1), branch(ctx, "d", 3))
    return list(await asyncio.gather(branch(ctx, "a", 2), branch(ctx, "b", 3), inner))


@task_handler("echo")
async def echo(payload: Any) -> Any:
    return payload


@task_handler("later")
async def later(payload: Any) -> Any:
    return payload


@workflow(name="evolving")
async def evolving_v1(ctx: WorkflowContext) -> str:
    await ctx.task("echo", "first", name="first", retry=NO_RETRY)
    await ctx.task("later", "second", name="second", retry=NO_RETRY)
    return "v1"


@workflow(name="evolving")
async def evolving_v2(ctx: WorkflowContext) -> str:
    await ctx.task("echo", "first", name="first", retry=NO_RETRY)
    return "v2"


async def test_gather_over_branches_of_several_steps_completes(make_stack: MakeStack) -> None:
    stack = await make_stack(registry_of(fan_out))
    stack.start_executor(handlers=handlers_of(echo), llm=False)
    started = await stack.client.start_workflow("fan_out")

    finished = await wait_finished(stack.client, started.workflow_id, within=60)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == [
        ["a0 after start", "a1 after a0"],
        ["b0 after start", "b1 after b0", "b2 after b1"],
        [["c0 after start"], ["d0 after start", "d1 after d0", "d2 after d1"]],
    ]


async def test_code_that_dropped_a_journaled_step_fails_as_non_determinism(make_stack: MakeStack) -> None:
    """v1 journals 'first' and 'second'; v2, deployed while 'second' waits, asks only for 'first'.

    Before, v2 completed with a journal longer than its code.
    """
    stack = await make_stack(registry_of(evolving_v1))
    stack.start_executor(handlers=handlers_of(echo), llm=False)  # no handler for 'later' yet
    started = await stack.client.start_workflow("evolving")

    async def second_started() -> bool:
        return [row.name for row in await step_rows(stack.database_url, started.workflow_id)] == [
            "first",
            "second",
        ]

    await eventually(second_started)
    await restart_coordinator(stack, registry_of(evolving_v2))
    stack.start_executor(handlers=handlers_of(echo, later), llm=False)
    failed = await wait_finished(stack.client, started.workflow_id, within=60)

    assert failed.status is WorkflowStatus.FAILED, failed.result
    assert (failed.error or "").startswith(
        "non-determinism at step 1: the workflow finished without asking for task step 'second'"
    ), failed.error
