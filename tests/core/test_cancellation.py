"""Cancellation reaches running work: when the coordinator takes a task back from the executor
running it (a cancelled workflow, a bulk cancel, a cleared task queue, a lease that moved),
the ClaimTasks stream carries a CancelTasks, and the executor aborts the in-flight call.

The LLM test runs the real executor and the real Anthropic SDK against the simulator with a
30 s latency: the call must end long before the simulator would answer, the simulator must see
the request abandoned, and the executor's slot must be free for the next task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.testing.simulator import SimulatorConfig
from support import ManualExecutor, Stack, eventually, registry_of
from toolkit import wait_finished

#: Far longer than any wait below: a call that ran to completion would fail the test.
SLOW_CALL = "fixed:30"
#: Generous for a loaded machine, and still well under SLOW_CALL.
CANCEL_WITHIN = 10.0


@workflow
async def ask(ctx: WorkflowContext, n: int) -> str:
    reply = await ctx.llm(model="sim", max_tokens=20, messages=[{"role": "user", "content": f"q{n}"}])
    return reply.text


async def cancel_one(stack: Stack, workflow_id: str) -> None:
    await stack.client.cancel_workflow(workflow_id, "no longer needed")


async def cancel_in_bulk(stack: Stack, workflow_id: str) -> None:
    assert (await stack.client.cancel_workflows(None, name="ask")).cancelled == 1


async def clear_task_queue(stack: Stack, workflow_id: str) -> None:
    assert (await stack.client.clear_task_queue(None)).cleared_tasks == 1


@pytest.mark.parametrize("cancel", [cancel_one, cancel_in_bulk, clear_task_queue])
async def test_cancelling_a_workflow_aborts_its_in_flight_llm_call(
    make_stack, cancel: Callable[[Stack, str], Awaitable[None]]
) -> None:
    stack: Stack = await make_stack(registry_of(ask))
    simulator = await stack.start_simulator(SimulatorConfig(latency=SLOW_CALL))
    executor = stack.start_executor(concurrency=1)
    [started] = await stack.client.start_workflows([("ask", {"n": 1})])
    await eventually(lambda: simulator.stats()["in_flight"] == 1 and executor.running_tasks == 1)

    await cancel(stack, started.workflow_id)

    # The executor observed the cancel and stopped the SDK request: the simulator saw the
    # client go away mid-request, and the slot is free again.
    await eventually(lambda: executor.tasks_cancelled == 1, timeout=CANCEL_WITHIN)
    await eventually(
        lambda: simulator.stats()["client_disconnects"] == 1 and simulator.stats()["in_flight"] == 0,
        timeout=CANCEL_WITHIN,
    )
    await eventually(lambda: executor.running_tasks == 0, timeout=CANCEL_WITHIN)
    assert (await stack.client.get_workflow(started.workflow_id)).status is WorkflowStatus.CANCELLED

    # The freed slot takes the next task at once (the one slot would otherwise wait 30 s).
    simulator.update_config(latency="fixed:0")
    [next_one] = await stack.client.start_workflows([("ask", {"n": 2})])
    finished = await wait_finished(stack.client, next_one.workflow_id, within=CANCEL_WITHIN)
    assert finished.status is WorkflowStatus.COMPLETED
    assert simulator.stats()["client_disconnects"] == 1


async def test_an_executor_back_from_a_lost_lease_is_told_to_stop_the_tasks_that_moved(make_stack) -> None:
    """Its lease expired while it was away (a network partition, a long pause): the task went
    back to the queue and another executor took it. The returning executor still runs its
    attempt; the coordinator tells it to stop."""
    stack: Stack = await make_stack(registry_of(ask))
    [started] = await stack.client.start_workflows([("ask", {"n": 1})])
    async with ManualExecutor(stack.server.address, "away") as away:
        await away.connect(free_slots=1)
        [task] = await away.take(1)
        await away.go_silent()
        await eventually(lambda: away.stream_ended.is_set())  # the lease expired

    async with ManualExecutor(stack.server.address, "other") as other:
        await other.connect(free_slots=1)
        [moved] = await other.take(1)
        assert (moved.task_id, moved.attempt) == (task.task_id, 2)

        async with ManualExecutor(stack.server.address, "away") as back:
            await back.connect(held_task_ids=[task.task_id])

            def cancels() -> list[Any]:
                return [m.cancel for m in back.messages if m.WhichOneof("message") == "cancel"]

            [cancel] = await eventually(cancels)
            # Token 0: every attempt of the task it may still run (it is another's now).
            assert [(a.task_id, a.fencing_token) for a in cancel.tasks] == [(task.task_id, 0)]
            assert "taken back" in cancel.reason
        # The executor now running it is not told anything.
        assert not [m for m in other.messages if m.WhichOneof("message") == "cancel"]
    assert (await stack.client.get_workflow(started.workflow_id)).status is WorkflowStatus.RUNNING
