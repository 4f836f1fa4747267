"""ExplainWorkflow: the right verdict, in words and fields, for each situation a workflow can be in.

Each test puts a workflow into one situation with real parts (a real coordinator on
both databases, a ManualExecutor that claims and reports exactly what the test says,
restarts with other workflow code) and checks what the explainer answers: the
structured fields an operator's tooling reads, and the sentence a person reads.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from conveyor import RetryPolicy, WorkflowContext, workflow
from conveyor.client.models import Explanation, WorkflowStatus
from conveyor.coordinator.store.schema import replay_queue
from conveyor.errors import InvalidArgument, NotFound
from conveyor.v1 import common_pb2
from conveyor.v1 import executor_service_pb2 as executor_pb
from support import ManualExecutor, Stack, eventually, registry_of
from toolkit import MakeStack, execute, restart_coordinator, task_rows, wait_finished

#: Long enough that a waiting step is still waiting when the test looks.
SLOW_RETRY = RetryPolicy(max_attempts=3, initial_backoff=60.0, multiplier=1.0, max_backoff=60.0)
KIND = "work"


@workflow
async def one_task(ctx: WorkflowContext, item: int) -> Any:
    return await ctx.task(KIND, item, name="crunch", retry=SLOW_RETRY)


@workflow
async def napper(ctx: WorkflowContext, seconds: float) -> str:
    await ctx.sleep(seconds, name="nap")
    return "rested"


@workflow(name="drifting")
async def drifting_v1(ctx: WorkflowContext) -> str:
    ctx.now()
    ctx.random()
    await ctx.sleep(0.3, name="pause")
    return "v1"


@workflow(name="drifting")
async def drifting_v2(ctx: WorkflowContext) -> Any:
    """The same workflow after a careless deploy: step 2 is now a task, not a sleep."""
    ctx.now()
    ctx.random()
    return await ctx.task(KIND, 1, name="pause")


WORKFLOWS = registry_of(one_task, napper, drifting_v1)
#: After a deploy that dropped ``napper`` and changed ``drifting``.
REDEPLOYED = registry_of(one_task, drifting_v2)

CLOCK = r"\d\d:\d\d:\d\d UTC"


async def start_queued(stack: Stack, count: int) -> list[str]:
    started = await stack.client.start_workflows([("one_task", {"item": i}) for i in range(count)])

    async def all_queued() -> bool:
        return len(await task_rows(stack.database_url)) == count

    await eventually(all_queued)
    return [s.workflow_id for s in started]


async def explain_until(stack: Stack, workflow_id: str, wait: str) -> Explanation:
    """The explanation once its first step waits for ``wait`` (executors connect asynchronously)."""

    async def reached() -> Explanation | None:
        explanation = await stack.client.explain_workflow(workflow_id)
        return explanation if explanation.steps and explanation.steps[0].wait == wait else None

    return await eventually(reached)  # type: ignore[no-any-return]


async def test_a_queued_step_is_placed_behind_the_older_tasks_of_its_shard_and_names_the_leaseholder(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS, shards=1)
    ids = await start_queued(stack, 4)
    async with ManualExecutor(stack.server.address, "m1", task_kinds=[KIND]) as m1:
        await m1.connect(free_slots=0)
        last = await explain_until(stack, ids[-1], "queued")
        first = await stack.client.explain_workflow(ids[0])

    (step,) = last.steps
    assert (last.situation, step.number, step.name, step.task_kind) == (
        "steps_in_progress",
        0,
        "crunch",
        KIND,
    )
    assert (step.shard, step.tasks_ahead, step.shard_executors) == (0, 3, ("m1",))
    assert (step.attempt, step.max_attempts) == (1, 3)
    assert step.since_last_heartbeat is not None and step.since_last_heartbeat < 30
    assert re.fullmatch(
        r"step 0 `crunch` \(work\) is queued on shard 0 behind 3 older tasks; "
        r"shard 0 is leased by executor m1 \(last heartbeat \d+\.\d s ago\)",
        step.text,
    ), step.text
    assert last.summary == f"running; waiting for 1 step: {step.text}."
    assert first.steps[0].tasks_ahead == 0
    assert "is next in line on shard 0; shard 0 is leased by executor m1" in first.steps[0].text


async def test_a_claimed_step_is_running_on_its_executor(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=1)
    (workflow_id,) = await start_queued(stack, 1)
    async with ManualExecutor(stack.server.address, "m1", task_kinds=[KIND]) as m1:
        await m1.connect(free_slots=1)
        await m1.take(1)
        explanation = await explain_until(stack, workflow_id, "running")

    (step,) = explanation.steps
    assert (step.executor_id, step.attempt, step.max_attempts) == ("m1", 1, 3)
    assert step.claimed_at is not None
    assert re.fullmatch(
        r"step 0 `crunch` \(work\) is running on executor m1 for \d+\.\d s, attempt 1 of 3; "
        r"last heartbeat \d+\.\d s ago; without a result by its deadline at "
        rf"{CLOCK} \(in \d+\.\d min\) it is taken back and retried",
        step.text,
    ), step.text
    assert step.deadline_at is not None and step.deadline_at > step.claimed_at


async def test_a_step_whose_attempt_failed_with_529_waits_for_its_retry_at_a_stated_time(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS, shards=1)
    (workflow_id,) = await start_queued(stack, 1)
    async with ManualExecutor(stack.server.address, "m1", task_kinds=[KIND]) as m1:
        await m1.connect(free_slots=1)
        (task,) = await m1.take(1)
        failure = executor_pb.TaskFailure(
            error_class=common_pb2.ERROR_CLASS_RETRYABLE, message="HTTP 529 overloaded_error: Overloaded"
        )
        await m1.report(
            executor_pb.TaskResult(task_id=task.task_id, fencing_token=task.fencing_token, failure=failure)
        )
        explanation = await explain_until(stack, workflow_id, "retry_backoff")

    (step,) = explanation.steps
    assert (step.attempt, step.max_attempts) == (2, 3)
    assert step.available_at is not None and step.available_at > datetime.now(UTC)
    assert "HTTP 529 overloaded_error: Overloaded" in step.last_error
    clock = step.available_at.strftime("%H:%M:%S UTC")
    assert re.fullmatch(
        rf"step 0 `crunch` \(work\) is waiting for retry #1 \(attempt 2 of 3\) at {clock} "
        r"\(in \d+\.\d s\) after: HTTP 529 overloaded_error: Overloaded",
        step.text,
    ), step.text


async def test_a_rate_limited_step_waits_without_spending_an_attempt(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, shards=1)
    (workflow_id,) = await start_queued(stack, 1)
    async with ManualExecutor(stack.server.address, "m1", task_kinds=[KIND]) as m1:
        await m1.connect(free_slots=1)
        (task,) = await m1.take(1)
        failure = executor_pb.TaskFailure(
            error_class=common_pb2.ERROR_CLASS_RATE_LIMITED, message="HTTP 429 rate_limit_error: slow down"
        )
        failure.retry_after.FromSeconds(120)
        await m1.report(
            executor_pb.TaskResult(task_id=task.task_id, fencing_token=task.fencing_token, failure=failure)
        )
        explanation = await explain_until(stack, workflow_id, "rate_limited")

    (step,) = explanation.steps
    assert step.attempt == 1  # not spent
    assert re.fullmatch(
        rf"step 0 `crunch` \(work\) was rate limited \(HTTP 429 rate_limit_error: slow down\); it is "
        rf"tried again at {CLOCK} \(in \d+\.\d min\) without spending an attempt \(rate-limit wait 1 of 20\)",
        step.text,
    ), step.text


async def test_a_step_held_by_a_disconnected_executor_says_when_its_lease_runs_out(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS, shards=1, lease_ttl=60.0)
    (workflow_id,) = await start_queued(stack, 1)
    async with ManualExecutor(stack.server.address, "m1", task_kinds=[KIND]) as m1:
        await m1.connect(free_slots=1)
        await m1.take(1)
        await m1.disconnect()
        explanation = await explain_until(stack, workflow_id, "executor_lost")

    (step,) = explanation.steps
    assert step.executor_id == "m1"
    assert re.fullmatch(
        r"step 0 `crunch` \(work\) was claimed by executor m1, which is not connected \(last heard from "
        r"\d+\.\d s ago\); its lease expires in \d+\.\d s, and the task then goes back to the queue "
        r"unless the executor reconnects \(attempt 1 of 3\); without a result by its deadline at "
        rf"{CLOCK} \(in \d+\.\d min\) it is taken back and retried",
        step.text,
    ), step.text


async def test_a_step_on_a_shard_no_live_executor_holds_says_so_and_what_to_start(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS)
    (workflow_id,) = await start_queued(stack, 1)
    shard = (await stack.client.get_workflow(workflow_id)).shard
    # An executor that serves other kinds does not help.
    async with ManualExecutor(stack.server.address, "llm-only", task_kinds=["llm"]) as other:
        await other.connect()
        explanation = await explain_until(stack, workflow_id, "no_executor")

    (step,) = explanation.steps
    assert (step.shard, step.shard_executors) == (shard, ())
    assert step.text == (
        f"step 0 `crunch` (work) is next in line on shard {shard}, but no live executor holds shard "
        f"{shard} (no live executor runs `work` tasks: start one (with --handlers for this kind))"
    )


async def test_a_sleeping_step_says_until_when(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("napper", {"seconds": 600})
    explanation = await explain_until(stack, started.workflow_id, "sleeping")

    (step,) = explanation.steps
    assert (step.number, step.name, step.kind, step.task_kind) == (0, "nap", "sleep", "")
    assert re.fullmatch(rf"step 0 `nap` sleeps until {CLOCK} \(in \d+\.\d min\)", step.text), step.text


async def test_a_workflow_in_the_replay_queue_without_its_code_says_so_and_how_to_recover(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflows([("napper", {"seconds": 0.3}) for _ in range(3)])
    ids = [s.workflow_id for s in started]
    await eventually(lambda: _all_started_a_step(stack, ids))
    await restart_coordinator(stack, REDEPLOYED)
    await eventually(lambda: _replay_queue_depth_is(stack, 3))

    explanation = await stack.client.explain_workflow(ids[2])

    assert (explanation.situation, explanation.replay_queue_ahead, explanation.steps) == (
        "code_not_loaded",
        2,
        (),
    )
    assert explanation.summary.startswith(
        "waiting in the replay queue, but this coordinator has not loaded the code of workflow `napper`"
    )
    assert "--workflows" in explanation.summary and "conveyor admin clear-replay-queue" in explanation.summary


async def test_a_running_workflow_with_nothing_in_progress_and_no_replay_entry_is_stranded(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("napper", {"seconds": 0.3})
    await eventually(lambda: _all_started_a_step(stack, [started.workflow_id]))
    await restart_coordinator(stack, REDEPLOYED)
    await eventually(lambda: _replay_queue_depth_is(stack, 1))
    # The row an invariant-breaking bug (or a hand-edit of the database) would lose.
    await execute(stack.database_url, sa.delete(replay_queue))

    explanation = await stack.client.explain_workflow(started.workflow_id)

    assert explanation.situation == "stranded"
    assert "nothing will resume it" in explanation.summary
    assert f"conveyor cancel {started.workflow_id}" in explanation.summary


async def test_a_workflow_failed_by_non_determinism_names_the_step(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("drifting")
    await eventually(lambda: _step_count_is(stack, started.workflow_id, 3))
    await restart_coordinator(stack, REDEPLOYED)
    finished = await wait_finished(stack.client, started.workflow_id)
    assert finished.status is WorkflowStatus.FAILED

    explanation = await stack.client.explain_workflow(started.workflow_id)

    assert (explanation.situation, explanation.steps) == ("finished", ())
    assert re.match(
        rf"failed at {CLOCK}, \d+\.\d s after it started: non-determinism at step 2: the workflow asked "
        r"for task step 'pause' but the journal has sleep step 'pause' there",
        explanation.summary,
    ), explanation.summary


async def test_a_completed_workflow_says_when_and_in_how_many_steps(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("napper", {"seconds": 0.05})
    await wait_finished(stack.client, started.workflow_id)

    explanation = await stack.client.explain_workflow(started.workflow_id)

    assert explanation.situation == "finished"
    assert explanation.workflow.result == "rested"
    assert re.fullmatch(
        rf"completed at {CLOCK}, \d+\.\d s after it started, in 1 step\.", explanation.summary
    )


async def test_explaining_an_unknown_or_malformed_id_is_a_clear_error(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)

    with pytest.raises(NotFound, match="no workflow with id 'nope'"):
        await stack.client.explain_workflow("nope")
    with pytest.raises(InvalidArgument, match="workflow_id is required"):
        await stack.client.explain_workflow("")


async def _all_started_a_step(stack: Stack, workflow_ids: list[str]) -> bool:
    return all([(await stack.client.get_workflow(wid)).step_count >= 1 for wid in workflow_ids])


async def _step_count_is(stack: Stack, workflow_id: str, count: int) -> bool:
    return (await stack.client.get_workflow(workflow_id)).step_count == count


async def _replay_queue_depth_is(stack: Stack, depth: int) -> bool:
    return (await stack.client.diagnose()).replay_queue_depth == depth
