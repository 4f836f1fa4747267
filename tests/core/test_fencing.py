"""Fencing: only the current holder of a task, with the current token, may finish it.

A manual executor plays the executor that comes back too late, reports twice, or reports
work that is not its own; the coordinator must apply each step's outcome exactly once.
"""

from __future__ import annotations

from typing import Any

from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.v1 import executor_service_pb2 as executor_pb
from support import ManualExecutor, Stack, eventually, llm_message_json, registry_of

ACCEPTED = executor_pb.RESULT_DISPOSITION_ACCEPTED
DUPLICATE = executor_pb.RESULT_DISPOSITION_DUPLICATE
STALE = executor_pb.RESULT_DISPOSITION_STALE


@workflow
async def two_steps(ctx: WorkflowContext, topic: str) -> str:
    first = await ctx.llm(
        model="sim", max_tokens=50, name="first", messages=[{"role": "user", "content": topic}]
    )
    second = await ctx.llm(
        model="sim",
        max_tokens=50,
        name="second",
        messages=[{"role": "user", "content": "then " + first.text}],
    )
    return f"{first.text} / {second.text}"


async def executor_ids(stack: Stack) -> list[str]:
    return [info.executor_id for info in (await stack.client.diagnose()).executors]


async def _only_live(stack: Stack) -> bool:
    return await executor_ids(stack) == ["fence-live"]


async def step_count(stack: Stack, workflow_id: str, count: int) -> Any:
    workflow = await stack.client.get_workflow(workflow_id, include_steps=True)
    return workflow if len(workflow.steps) == count else None


async def test_a_late_result_with_a_stale_token_is_rejected_and_never_overwrites_the_accepted_one(
    make_stack,
) -> None:
    """An executor that went silent lost its lease; the task was re-claimed with a new token.
    Its late result, whether it arrives before or after the new holder's, is STALE, counted
    in Diagnose, and the step keeps the new holder's result: the lost executor cannot
    overwrite or race the live one."""
    stack = await make_stack(registry_of(two_steps))
    [started] = await stack.client.start_workflows([("two_steps", {"topic": "tides"})])
    address = stack.server.address
    async with ManualExecutor(address, "fence-lost") as lost, ManualExecutor(address, "fence-live") as live:
        await lost.connect(free_slots=1)
        [old_claim] = await lost.take(1)
        await live.connect()
        await lost.go_silent()
        await eventually(lambda: lost.stream_ended.is_set())  # the lease expired: the coordinator hung up
        # Forgotten once its tasks' requeue has committed (just after the hang-up).
        await eventually(lambda: _only_live(stack))

        await live.credit(1)
        [new_claim] = await live.take(1)
        assert (new_claim.task_id, new_claim.step_number) == (old_claim.task_id, 0)
        assert new_claim.fencing_token != old_claim.fencing_token
        assert new_claim.attempt == old_claim.attempt + 1

        late = lost.success(old_claim, llm_message_json("from the lost executor"))
        current = live.success(new_claim, llm_message_json("from the live executor"))
        assert await lost.report(late) == [STALE]  # late, while the live executor still runs the task
        assert await live.report(current) == [ACCEPTED]
        assert await lost.report(late) == [STALE]  # late, after the live executor finished it

        workflow = await eventually(lambda: step_count(stack, started.workflow_id, 2))
        first = workflow.steps[0]
        assert (first.status, first.result["content"][0]["text"]) == ("completed", "from the live executor")
        assert (first.executor_id, first.attempt) == ("fence-live", 2)
        report = await stack.client.diagnose()
        assert report.rejected_stale_results == 2
        assert list(report.violations) == []

        await live.credit(1)
        [second] = await live.take(1)
        assert await live.report(live.success(second, llm_message_json("done"))) == [ACCEPTED]
    finished = await stack.client.wait(started.workflow_id, timeout=10)
    assert (finished.status, finished.result) == (WorkflowStatus.COMPLETED, "from the live executor / done")


async def test_an_old_token_is_stale_even_when_its_executor_holds_the_task_again(make_stack) -> None:
    """The token, not just the executor id, identifies the attempt: a hung executor whose
    lease expired restarts under the same id and is given the same task again; a result of
    its earlier attempt (old token) is STALE, and only the current attempt's is applied."""
    stack = await make_stack(registry_of(two_steps))
    [started] = await stack.client.start_workflows([("two_steps", {"topic": "tides"})])
    address = stack.server.address
    async with ManualExecutor(address, "fence-same") as before:
        await before.connect(free_slots=1)
        [old_claim] = await before.take(1)
        await before.go_silent()
        await eventually(lambda: before.stream_ended.is_set())
    await eventually(lambda: _lease_loss_recorded(stack, started.workflow_id))

    async with ManualExecutor(address, "fence-same") as after:
        await after.connect(free_slots=1)
        [new_claim] = await after.take(1)
        assert new_claim.task_id == old_claim.task_id
        assert new_claim.fencing_token != old_claim.fencing_token
        assert (old_claim.attempt, new_claim.attempt) == (1, 2)
        assert await after.report(after.success(old_claim, llm_message_json("earlier attempt"))) == [STALE]
        assert await after.report(after.success(new_claim, llm_message_json("current attempt"))) == [ACCEPTED]
        workflow = await eventually(lambda: step_count(stack, started.workflow_id, 2))
    assert workflow.steps[0].result["content"][0]["text"] == "current attempt"
    assert (await stack.client.diagnose()).rejected_stale_results == 1


async def _lease_loss_recorded(stack: Stack, workflow_id: str) -> bool:
    """Whether step 0's first attempt was written off as lost with the lease."""
    step = (await stack.client.get_workflow(workflow_id, include_steps=True)).steps[0]
    return step.attempt == 1 and "lease expired" in step.error


async def test_reporting_the_same_accepted_result_twice_is_idempotent(make_stack) -> None:
    """Executors retry RecordResults when an answer is lost, so the coordinator sees the same
    result again: it must acknowledge it as DUPLICATE (so the executor stops retrying)
    without touching the journal, re-running the replay or finishing the workflow twice."""
    stack = await make_stack(registry_of(two_steps))
    [started] = await stack.client.start_workflows([("two_steps", {"topic": "tides"})])
    async with ManualExecutor(stack.server.address, "fence-twice") as executor:
        await executor.connect(free_slots=1)
        [first] = await executor.take(1)
        result = executor.success(first, llm_message_json("one"))
        assert await executor.report(result) == [ACCEPTED]
        after_first = await eventually(lambda: step_count(stack, started.workflow_id, 2))

        assert await executor.report(result) == [DUPLICATE]
        await executor.credit(1)
        [second] = await executor.take(1)
        assert second.step_number == 1
        final = executor.success(second, llm_message_json("two"))
        assert await executor.report(final) == [ACCEPTED]
        done = await stack.client.wait(started.workflow_id, timeout=10)
        assert await executor.report(final, result) == [DUPLICATE, DUPLICATE]

    assert (done.status, done.result) == (WorkflowStatus.COMPLETED, "one / two")
    again = await stack.client.get_workflow(started.workflow_id, include_steps=True)
    assert again.steps[0] == after_first.steps[0]  # the duplicates changed nothing
    assert (again.completed_at, again.result, len(again.steps)) == (done.completed_at, "one / two", 2)
    assert stack.coordinator.stats.workflows_finished == {"completed": 1}
    report = await stack.client.diagnose()
    assert report.rejected_stale_results == 0
    assert report.replay_queue_depth == 0
    assert dict(report.workflows_by_status) == {"completed": 1}


async def test_a_result_reported_twice_in_one_batch_is_accepted_once_and_acknowledged_as_duplicate(
    make_stack,
) -> None:
    """The reporter may resend a result in the same batch as its first copy (e.g. after a
    retried call merged with new results): the first copy is applied, the second is a
    duplicate of it, not a stale result from a lost executor."""
    stack = await make_stack(registry_of(two_steps))
    [started] = await stack.client.start_workflows([("two_steps", {"topic": "tides"})])
    async with ManualExecutor(stack.server.address, "fence-batch") as executor:
        await executor.connect(free_slots=1)
        [first] = await executor.take(1)
        result = executor.success(first, llm_message_json("one"))
        assert await executor.report(result, result) == [ACCEPTED, DUPLICATE]
        await eventually(lambda: step_count(stack, started.workflow_id, 2))
    assert (await stack.client.diagnose()).rejected_stale_results == 0


async def test_an_executor_cannot_report_results_for_a_task_leased_to_another(make_stack) -> None:
    """Knowing a task's id and token is not enough: the result must come from the executor
    holding the lease. Another executor's report is STALE and leaves the lease in place, so
    the holder's own result is still accepted."""
    stack = await make_stack(registry_of(two_steps))
    [started] = await stack.client.start_workflows([("two_steps", {"topic": "tides"})])
    address = stack.server.address
    async with (
        ManualExecutor(address, "fence-holder") as holder,
        ManualExecutor(address, "fence-other") as other,
    ):
        await holder.connect(free_slots=1)
        [task] = await holder.take(1)
        await other.connect()

        forged = other.success(task, llm_message_json("forged"))
        assert await other.report(forged) == [STALE]
        never_connected = ManualExecutor(address, "fence-stranger")
        try:
            assert await never_connected.report(forged) == [STALE]
        finally:
            await never_connected.close()
        report = await stack.client.diagnose()
        assert {info.executor_id: info.claimed_tasks for info in report.executors} == {
            "fence-holder": 1,
            "fence-other": 0,
        }

        assert await holder.report(holder.success(task, llm_message_json("genuine"))) == [ACCEPTED]
        assert await other.report(forged) == [STALE]
        workflow = await eventually(lambda: step_count(stack, started.workflow_id, 2))
    assert workflow.steps[0].result["content"][0]["text"] == "genuine"
    assert workflow.steps[0].executor_id == "fence-holder"
    assert (await stack.client.diagnose()).rejected_stale_results == 3
