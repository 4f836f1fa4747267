"""Server-side start-to-close deadlines: a live, heartbeating executor that never reports a
task cannot hold it for ever. Past the attempt's timeout (the step's, or the coordinator's
default) plus a grace period the coordinator takes the task back, tells the executor to stop
(CancelTasks), and retries the task, spending an attempt, or fails it after the last one.

Every wait polls for the observable outcome; the deadlines are short so the polls end soon.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.v1 import executor_service_pb2 as executor_pb
from conveyor.workflow import RetryPolicy
from support import ManualExecutor, Stack, eventually, llm_message_json, registry_of
from toolkit import wait_finished

ACCEPTED = executor_pb.RESULT_DISPOSITION_ACCEPTED
STALE = executor_pb.RESULT_DISPOSITION_STALE

QUICK_RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.1, max_backoff=0.1)


@workflow
async def hangs(ctx: WorkflowContext, n: int) -> Any:
    return await ctx.task("hang", n, retry=QUICK_RETRY, timeout=1.0)


@workflow
async def ask(ctx: WorkflowContext, n: int) -> str:
    reply = await ctx.llm(model="sim", max_tokens=20, messages=[{"role": "user", "content": f"q{n}"}])
    return reply.text


def cancels_of(executor: ManualExecutor) -> list[tuple[int, int]]:
    """Every (task id, fencing token) the coordinator told ``executor`` to stop."""
    return [
        (attempt.task_id, attempt.fencing_token)
        for message in executor.messages
        if message.WhichOneof("message") == "cancel"
        for attempt in message.cancel.tasks
    ]


async def test_an_unreported_attempt_is_taken_back_at_its_deadline_retried_then_failed(make_stack) -> None:
    stack: Stack = await make_stack(registry_of(hangs), task_deadline_grace=0.5)
    [started] = await stack.client.start_workflows([("hangs", {"n": 1})])
    workflow_id = started.workflow_id
    async with ManualExecutor(stack.server.address, "hung", task_kinds=["hang"]) as hung:
        await hung.connect(free_slots=1)
        [first] = await hung.take(1)
        assert first.attempt == 1

        # Running: Explain shows the deadline, the step's 1 s timeout plus 0.5 s grace after the claim.
        running = (await stack.client.explain_workflow(workflow_id)).steps[0]
        assert running.wait == "running", running
        assert running.deadline_at - running.claimed_at == timedelta(seconds=1.5)
        assert "deadline" in running.text and "retried" in running.text, running.text

        # The executor heartbeats but never reports: at the deadline the task is taken back,
        # the executor is told to stop that attempt, and the step waits for attempt 2.
        await eventually(lambda: (first.task_id, first.fencing_token) in cancels_of(hung))
        retried = (await stack.client.explain_workflow(workflow_id)).steps[0]
        assert retried.wait in ("retry_backoff", "queued"), retried
        assert retried.attempt == 2 and retried.deadline_at is None, retried
        assert "start-to-close deadline" in retried.last_error, retried.last_error
        assert "timed out" in retried.text, retried.text

        # Its late result is no longer wanted.
        assert await hung.report(hung.success(first, llm_message_json("late"))) == [STALE]

        await hung.credit(1)
        [second] = await hung.take(1)
        assert (second.task_id, second.attempt) == (first.task_id, 2)
        assert second.fencing_token != first.fencing_token

        finished = await wait_finished(stack.client, workflow_id)
        assert finished.status is WorkflowStatus.FAILED
        assert "start-to-close deadline" in (finished.error or ""), finished.error
        assert (second.task_id, second.fencing_token) in cancels_of(hung)
        step = (await stack.client.get_workflow(workflow_id, include_steps=True)).steps[0]
        assert (str(step.status), step.attempt, step.executor_id) == ("failed", 2, "hung")


async def test_a_step_without_a_timeout_gets_the_default_deadline_and_carries_on(make_stack) -> None:
    """LLM steps rarely set a timeout: the coordinator's default bounds them; the retry then
    completes normally."""
    stack: Stack = await make_stack(registry_of(ask), default_task_timeout=1.0, task_deadline_grace=0.2)
    [started] = await stack.client.start_workflows([("ask", {"n": 1})])
    async with ManualExecutor(stack.server.address, "slow") as slow:
        await slow.connect(free_slots=1)
        [first] = await slow.take(1)
        assert not first.HasField("timeout") or first.timeout.ToTimedelta() == timedelta(0)
        explained = (await stack.client.explain_workflow(started.workflow_id)).steps[0]
        assert explained.deadline_at - explained.claimed_at == timedelta(seconds=1.2)

        await eventually(lambda: (first.task_id, first.fencing_token) in cancels_of(slow))
        await slow.credit(1)
        [second] = await slow.take(1)
        assert (second.task_id, second.attempt) == (first.task_id, 2)
        assert await slow.report(slow.success(second, llm_message_json("on time"))) == [ACCEPTED]

        finished = await wait_finished(stack.client, started.workflow_id)
        assert (finished.status, finished.result) == (WorkflowStatus.COMPLETED, "on time")


async def test_a_failed_expiry_pass_is_retried_and_the_deadline_still_enforced(
    make_stack, monkeypatch
) -> None:
    """The deadline loop is level-triggered: a pass that fails (the database down, a bug) loses
    nothing, because the restarted loop reads the overdue tasks from the database again."""
    from conveyor.coordinator.store import deadlines

    real = deadlines.expire_overdue
    failures: list[int] = []

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(1)
            raise RuntimeError("simulated failure of the expiry write")
        return real(*args, **kwargs)

    monkeypatch.setattr(deadlines, "expire_overdue", failing_once)
    stack: Stack = await make_stack(registry_of(hangs), task_deadline_grace=0.2)
    [started] = await stack.client.start_workflows([("hangs", {"n": 1})])
    async with ManualExecutor(stack.server.address, "hung", task_kinds=["hang"]) as hung:
        await hung.connect(free_slots=1)
        [first] = await hung.take(1)
        await eventually(lambda: (first.task_id, first.fencing_token) in cancels_of(hung))
        assert failures == [1]
        retried = (await stack.client.explain_workflow(started.workflow_id)).steps[0]
        assert retried.attempt == 2 and "start-to-close deadline" in retried.last_error
