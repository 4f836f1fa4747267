"""Retries as the queue owns them, through a real executor, the real SDK and the simulator.

The policy is the brief's: a 429 waits for ``retry-after`` without spending an
attempt; 529/5xx back off and spend one; other 4xx fail at once. Handler tasks
steer the same machinery with ``PermanentTaskError`` / ``TaskRateLimited``. Every
test counts what actually reached the simulator or the handler, so a retry that
happened in the wrong place (or not at all) shows up as a wrong count.
"""

from __future__ import annotations

import threading
from typing import Any

import anthropic

from conveyor import (
    PermanentTaskError,
    RetryPolicy,
    StepFailed,
    TaskRateLimited,
    WorkflowContext,
    task_handler,
    workflow,
)
from conveyor.client.models import WorkflowStatus
from conveyor.testing.simulator import SimulatorConfig
from support import eventually, registry_of
from toolkit import MakeStack, handlers_of, task_rows, wait_finished


def fast_retry(max_attempts: int) -> RetryPolicy:
    """Short fixed backoffs so retries finish within a test's time budget."""
    return RetryPolicy(max_attempts=max_attempts, initial_backoff=0.05, multiplier=1.0, max_backoff=0.05)


def ask(content: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


@workflow
async def one_call(ctx: WorkflowContext, max_tokens: int = 50, attempts: int = 5) -> str:
    reply = await ctx.llm(
        model="sim", max_tokens=max_tokens, name="call", messages=ask("hello"), retry=fast_retry(attempts)
    )
    return reply.text


@workflow
async def call_or_fallback(ctx: WorkflowContext, max_tokens: int, attempts: int) -> dict[str, Any]:
    try:
        reply = await ctx.llm(
            model="sim", max_tokens=max_tokens, name="call", messages=ask("hello"), retry=fast_retry(attempts)
        )
    except StepFailed as error:
        return {
            "fallback": True,
            "error_type": type(error).__name__,
            "step_number": error.step_number,
            "step_name": error.step_name,
            "error": error.error,
        }
    return {"fallback": False, "text": reply.text}


@workflow
async def run_task(ctx: WorkflowContext, kind: str, payload: Any, attempts: int = 3) -> Any:
    return await ctx.task(kind, payload, retry=fast_retry(attempts))


@workflow
async def task_or_report(ctx: WorkflowContext, kind: str, payload: Any, attempts: int) -> dict[str, Any]:
    try:
        return {"value": await ctx.task(kind, payload, retry=fast_retry(attempts))}
    except StepFailed as error:
        return {"failed": error.error, "error_type": type(error).__name__}


WORKFLOWS = registry_of(one_call, call_or_fallback, run_task, task_or_report)


# ----------------------------------------------------------------------------- LLM steps


async def test_rate_limited_call_waits_for_retry_after_without_spending_an_attempt(
    make_stack: MakeStack,
) -> None:
    """With max_attempts=1, a 429 that spent an attempt would fail the step: it must still complete.

    The simulator's input-token bucket (600 a minute, refilling 10 a second) is put
    1.5 s in debt by one oversized request, so the workflow's call meets a 429 and
    must wait out ``retry-after``; the wait is visible on the step meanwhile.
    """
    stack = await make_stack(WORKFLOWS)
    simulator = await stack.start_simulator(SimulatorConfig(itpm=600))
    stack.start_executor()
    await eventually(lambda: _live_executors(stack))
    sdk = anthropic.AsyncAnthropic(base_url=simulator.base_url, api_key="test", max_retries=0)
    try:
        # 2428 characters estimate to 610 input tokens: admitted into a full bucket of 600, it
        # leaves the bucket 10 tokens in debt, 1.5 s short of the 5 tokens "hello" needs.
        await sdk.messages.create(model="sim", max_tokens=1, messages=ask("x" * 2428))
    finally:
        await sdk.close()
    simulator.reset_stats()

    started = await stack.client.start_workflow("one_call", {"attempts": 1})

    async def waiting_out_a_429() -> str:
        detail = await stack.client.get_workflow(started.workflow_id, include_steps=True)
        if detail.status.finished:
            return f"finished without waiting: {detail.status} {detail.error}"
        return detail.steps[0].error if detail.steps else ""

    note = await eventually(waiting_out_a_429)
    assert note.startswith("rate limited, retrying in")
    assert "HTTP 429 rate_limit_error" in note
    finished = await wait_finished(stack.client, started.workflow_id)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == "hello"
    (step,) = (await stack.client.get_workflow(started.workflow_id, include_steps=True)).steps
    assert (step.status, step.attempt, step.error) == ("completed", 1, "")
    stats = simulator.stats()
    assert stats["rate_limited"] >= 1
    assert stats["successes"] == 1
    assert stats["requests"] == stats["rate_limited"] + 1


async def test_overloaded_calls_back_off_and_spend_attempts_until_the_api_recovers(
    make_stack: MakeStack,
) -> None:
    """529s are transient: each is a spent attempt with its error recorded on the step while it retries."""
    stack = await make_stack(WORKFLOWS)
    simulator = await stack.start_simulator(SimulatorConfig(error_529=1.0))
    stack.start_executor()
    started = await stack.client.start_workflow("one_call", {"attempts": 100})

    async def retrying_after_529s() -> bool:
        detail = await stack.client.get_workflow(started.workflow_id, include_steps=True)
        step = detail.steps[0] if detail.steps else None
        return (
            step is not None
            and step.status == "running"
            and "529" in step.error
            and simulator.stats()["overloaded"] >= 2
        )

    await eventually(retrying_after_529s)
    detail = await stack.client.get_workflow(started.workflow_id, include_steps=True)
    assert "overloaded" in detail.steps[0].error.lower()
    simulator.update_config(error_529=0.0)
    finished = await wait_finished(stack.client, started.workflow_id)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == "hello"
    (step,) = (await stack.client.get_workflow(started.workflow_id, include_steps=True)).steps
    stats = simulator.stats()
    assert step.attempt > 1
    assert step.attempt == stats["overloaded"] + 1 == stats["requests"]
    assert step.error == ""


async def test_bad_request_fails_the_step_after_one_attempt_and_fails_the_workflow(
    make_stack: MakeStack,
) -> None:
    """A 400 cannot succeed on retry: one call, then StepFailed fails the workflow with the API's words."""
    stack = await make_stack(WORKFLOWS)
    simulator = await stack.start_simulator()
    stack.start_executor()
    started = await stack.client.start_workflow("one_call", {"max_tokens": 0, "attempts": 5})
    finished = await wait_finished(stack.client, started.workflow_id)

    assert finished.status is WorkflowStatus.FAILED
    assert "step 0 ('call') failed" in finished.error
    assert "HTTP 400 invalid_request_error" in finished.error
    assert "max_tokens: Input should be greater than or equal to 1" in finished.error
    (step,) = (await stack.client.get_workflow(started.workflow_id, include_steps=True)).steps
    assert (step.status, step.attempt) == ("failed", 1)
    assert "max_tokens: Input should be greater than or equal to 1" in step.error
    assert simulator.stats()["requests"] == 1
    assert simulator.stats()["by_status"] == {"400": 1}


async def test_workflow_that_catches_a_bad_request_completes_with_its_fallback(make_stack: MakeStack) -> None:
    """StepFailed is catchable: the workflow decides, and its fallback is the result."""
    stack = await make_stack(WORKFLOWS)
    simulator = await stack.start_simulator()
    stack.start_executor()
    started = await stack.client.start_workflow("call_or_fallback", {"max_tokens": 0, "attempts": 5})
    finished = await wait_finished(stack.client, started.workflow_id)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result["fallback"] is True
    assert finished.result["error_type"] == "StepFailed"
    assert (finished.result["step_number"], finished.result["step_name"]) == (0, "call")
    assert "max_tokens: Input should be greater than or equal to 1" in finished.result["error"]
    assert simulator.stats()["requests"] == 1


async def test_exhausted_attempts_fail_the_step_after_exactly_max_attempts_calls(
    make_stack: MakeStack,
) -> None:
    """529 forever with max_attempts=3: three calls reach the API, then the workflow sees StepFailed."""
    stack = await make_stack(WORKFLOWS)
    simulator = await stack.start_simulator(SimulatorConfig(error_529=1.0))
    stack.start_executor()
    started = await stack.client.start_workflow("call_or_fallback", {"max_tokens": 50, "attempts": 3})
    finished = await wait_finished(stack.client, started.workflow_id)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result["error_type"] == "StepFailed"
    assert finished.result["error"].startswith("failed after 3 attempt(s): HTTP 529 overloaded_error")
    (step,) = (await stack.client.get_workflow(started.workflow_id, include_steps=True)).steps
    assert (step.status, step.attempt) == ("failed", 3)
    assert simulator.stats()["requests"] == 3
    assert simulator.stats()["overloaded"] == 3
    assert await task_rows(stack.database_url) == []


# ------------------------------------------------------------------------- handler tasks


async def test_handler_task_returns_its_json_value_to_the_workflow(make_stack: MakeStack) -> None:
    """The handler's return value travels as JSON and is what ``ctx.task`` returns."""

    @task_handler("double")
    async def double(payload: dict[str, Any]) -> dict[str, Any]:
        return {"doubled": [2 * n for n in payload["numbers"]], "label": payload["label"], "none": None}

    stack = await make_stack(WORKFLOWS)
    stack.start_executor(handlers=handlers_of(double), llm=False)
    started = await stack.client.start_workflow(
        "run_task", {"kind": "double", "payload": {"numbers": [1, 2.5, -3], "label": "né"}}
    )
    finished = await wait_finished(stack.client, started.workflow_id)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == {"doubled": [2, 5.0, -6], "label": "né", "none": None}
    (step,) = (await stack.client.get_workflow(started.workflow_id, include_steps=True)).steps
    assert (step.kind, step.name, step.status, step.attempt) == ("task", "double", "completed", 1)
    assert step.result == finished.result


async def test_handler_raising_a_plain_exception_is_retried_until_it_succeeds(make_stack: MakeStack) -> None:
    """Ordinary exceptions are transient: each spends an attempt, and the third call's value wins."""
    calls: list[Any] = []

    @task_handler("flaky")
    async def flaky(payload: Any) -> str:
        calls.append(payload)
        if len(calls) < 3:
            raise ConnectionError(f"downstream hiccup #{len(calls)}")
        return "finally"

    stack = await make_stack(WORKFLOWS)
    stack.start_executor(handlers=handlers_of(flaky), llm=False)
    started = await stack.client.start_workflow("run_task", {"kind": "flaky", "payload": 7, "attempts": 5})
    finished = await wait_finished(stack.client, started.workflow_id)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == "finally"
    assert calls == [7, 7, 7]
    (step,) = (await stack.client.get_workflow(started.workflow_id, include_steps=True)).steps
    assert (step.status, step.attempt) == ("completed", 3)


async def test_handler_raising_permanent_task_error_fails_the_step_at_once(make_stack: MakeStack) -> None:
    """PermanentTaskError skips the remaining attempts: one call, and the workflow sees the message."""
    calls: list[Any] = []

    @task_handler("reject")
    async def reject(payload: Any) -> None:
        calls.append(payload)
        raise PermanentTaskError(f"record {payload} does not exist")

    stack = await make_stack(WORKFLOWS)
    stack.start_executor(handlers=handlers_of(reject), llm=False)
    started = await stack.client.start_workflow(
        "task_or_report", {"kind": "reject", "payload": 42, "attempts": 5}
    )
    finished = await wait_finished(stack.client, started.workflow_id)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == {"failed": "record 42 does not exist", "error_type": "StepFailed"}
    assert calls == [42]
    (step,) = (await stack.client.get_workflow(started.workflow_id, include_steps=True)).steps
    assert (step.status, step.attempt) == ("failed", 1)


async def test_handler_raising_task_rate_limited_waits_without_spending_an_attempt(
    make_stack: MakeStack,
) -> None:
    """With max_attempts=1, two TaskRateLimited waits must not use up the only attempt."""
    calls: list[Any] = []

    @task_handler("throttled")
    async def throttled(payload: Any) -> str:
        calls.append(payload)
        if len(calls) <= 2:
            raise TaskRateLimited("downstream quota exhausted", retry_after=0.05)
        return "admitted"

    stack = await make_stack(WORKFLOWS)
    stack.start_executor(handlers=handlers_of(throttled), llm=False)
    started = await stack.client.start_workflow(
        "run_task", {"kind": "throttled", "payload": 1, "attempts": 1}
    )
    finished = await wait_finished(stack.client, started.workflow_id)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == "admitted"
    assert calls == [1, 1, 1]
    (step,) = (await stack.client.get_workflow(started.workflow_id, include_steps=True)).steps
    assert (step.status, step.attempt) == ("completed", 1)


async def test_sync_handler_runs_in_a_worker_thread_not_on_the_event_loop(make_stack: MakeStack) -> None:
    """A blocking handler must not stall the executor's loop (heartbeats, other tasks)."""
    loop_thread = threading.get_ident()
    seen: list[int] = []

    @task_handler("blocking")
    def blocking(payload: Any) -> dict[str, Any]:
        seen.append(threading.get_ident())
        return {"echo": payload, "on_loop_thread": threading.get_ident() == loop_thread}

    stack = await make_stack(WORKFLOWS)
    stack.start_executor(handlers=handlers_of(blocking), llm=False)
    started = await stack.client.start_workflow("run_task", {"kind": "blocking", "payload": "x"})
    finished = await wait_finished(stack.client, started.workflow_id)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == {"echo": "x", "on_loop_thread": False}
    assert len(seen) == 1
    assert seen[0] != loop_thread


async def test_task_of_a_kind_no_executor_serves_stays_queued_instead_of_failing(
    make_stack: MakeStack,
) -> None:
    """No executor for a kind is a capacity problem, not the workflow's fault: the task waits, visibly.

    A later workflow of a served kind completes on the same executor, so the
    dispatcher has demonstrably run while the unserved task sat untouched.
    """

    @task_handler("served")
    async def served(payload: Any) -> Any:
        return payload

    stack = await make_stack(WORKFLOWS, shards=4)
    stack.start_executor(handlers=handlers_of(served), llm=False)
    waiting = await stack.client.start_workflow("run_task", {"kind": "unserved", "payload": 1})
    await eventually(lambda: task_rows(stack.database_url, waiting.workflow_id))
    served_run = await stack.client.start_workflow("run_task", {"kind": "served", "payload": "done"})
    assert (await wait_finished(stack.client, served_run.workflow_id)).result == "done"

    workflow = await stack.client.get_workflow(waiting.workflow_id, include_steps=True)
    assert workflow.status is WorkflowStatus.RUNNING
    assert [(s.name, s.status, s.error) for s in workflow.steps] == [("unserved", "running", "")]
    report = await stack.client.diagnose()
    shard = report.shards[workflow.shard]
    assert (shard.queued_tasks, shard.claimed_tasks, shard.delayed_tasks) == (1, 0, 0)
    assert shard.HasField("oldest_queued_age")
    assert sum(s.queued_tasks for s in report.shards) == 1
    assert list(report.violations) == []
    (row,) = await task_rows(stack.database_url, waiting.workflow_id)
    assert (row.kind, row.claimed_by, row.fencing_token, row.attempt) == ("unserved", None, 0, 1)


async def _live_executors(stack: Any) -> bool:
    report = await stack.client.diagnose()
    return any(e.state == "live" and e.shards for e in report.executors)
