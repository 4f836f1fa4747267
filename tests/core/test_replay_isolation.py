"""One workflow's replay can fail only that workflow: never the replay queue, the writer or the coordinator.

Each test starts a misbehaving workflow first and an ordinary one after it. The replay
queue is drained oldest first, so a misbehaving head that failed the batch (or killed
or stalled the writer) would keep the ordinary workflow from ever finishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from conveyor import RetryPolicy, WorkflowContext, task_handler, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.model import StepKind, StepStatus
from conveyor.coordinator.model import WorkflowStatus as StoredStatus
from conveyor.coordinator.replay import JournalEntry, NewStep, ReplayOutcome
from conveyor.coordinator.store.schema import replay_queue, workflows
from conveyor.errors import InvalidArgument
from support import registry_of
from toolkit import MakeStack, fetch, handlers_of, replay_rows, wait_finished

NO_RETRY = RetryPolicy(max_attempts=1, initial_backoff=0.05)
#: Workflow code of ``blocks`` waits on this; every test that starts it sets it when done,
#: so the thread the coordinator abandoned ends too.
RELEASE = threading.Event()
ENTERED = threading.Event()


@workflow
async def quick(ctx: WorkflowContext, n: int) -> int:
    return n


@workflow
async def via_handler(ctx: WorkflowContext) -> Any:
    return await ctx.task("surrogate", None, retry=NO_RETRY)


@workflow
async def returns_surrogate(ctx: WorkflowContext) -> str:
    return "caf\udce9"


@workflow
async def sleeps(ctx: WorkflowContext, seconds: str) -> str:
    await ctx.sleep(float(seconds))
    return "woke"


@workflow
async def returns(ctx: WorkflowContext, size: int) -> str:
    return "x" * size


@workflow
async def exits(ctx: WorkflowContext, how: str) -> None:
    if how == "sys.exit":
        sys.exit(3)
    raise KeyboardInterrupt


@workflow
async def blocks(ctx: WorkflowContext) -> str:
    ENTERED.set()
    RELEASE.wait(120)  # blocking call in workflow code: what the replay timeout is for
    return "unblocked"


@task_handler("surrogate")
async def surrogate(payload: Any) -> str:
    return b"caf\xe9".decode("utf-8", "surrogateescape")


WORKFLOWS = registry_of(quick, via_handler, returns_surrogate, sleeps, returns, exits, blocks)


NOW_STEP = JournalEntry(0, StepKind.NOW, "now", "null", StepStatus.COMPLETED, "1")


async def without_replay_loop(stack: Any) -> Any:
    """The stack's coordinator with its replay loop stopped, so a test can drive the store's replay units."""
    coordinator = stack.coordinator
    (loop,) = [task for task in coordinator._loops if task.get_name() == "_replay_loop"]
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop
    return coordinator


async def assert_others_still_run(stack: Any) -> None:
    started = await stack.client.start_workflow("quick", {"n": 7})
    finished = await wait_finished(stack.client, started.workflow_id, within=60)
    assert (finished.status, finished.result) == (WorkflowStatus.COMPLETED, 7), finished.error


async def test_handler_result_with_a_lone_surrogate_fails_its_step_not_the_replay_queue(
    make_stack: MakeStack,
) -> None:
    """A surrogateescape-decoded result reaches the coordinator as the JSON escape "\\udce9": it is
    refused on arrival (a failed attempt saying why) instead of being replayed into unstorable text."""
    stack = await make_stack(WORKFLOWS)
    stack.start_executor(handlers=handlers_of(surrogate), llm=False)
    bad = await stack.client.start_workflow("via_handler")

    failed = await wait_finished(stack.client, bad.workflow_id, within=60)

    assert failed.status is WorkflowStatus.FAILED
    assert "lone surrogate" in (failed.error or ""), failed.error
    await assert_others_still_run(stack)


async def test_workflow_returning_unstorable_text_fails_alone(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    bad = await stack.client.start_workflow("returns_surrogate")
    await assert_others_still_run(stack)

    failed = await wait_finished(stack.client, bad.workflow_id)
    assert failed.status is WorkflowStatus.FAILED
    assert "lone surrogate" in (failed.error or ""), failed.error


@pytest.mark.parametrize("seconds", ["1e13", "inf", "nan", "-1"])
async def test_sleep_beyond_the_duration_bound_fails_that_workflow(
    make_stack: MakeStack, seconds: str
) -> None:
    """1e13 s overflows the int64 microsecond wake time; the bound (10 years) is checked in ctx.sleep()."""
    stack = await make_stack(WORKFLOWS)
    bad = await stack.client.start_workflow("sleeps", {"seconds": seconds})
    await assert_others_still_run(stack)

    failed = await wait_finished(stack.client, bad.workflow_id)
    assert failed.status is WorkflowStatus.FAILED
    assert f"ctx.sleep() duration is {float(seconds)!r} seconds" in (failed.error or ""), failed.error
    assert "at most 315360000 (10 years)" in (failed.error or "")


async def test_start_with_a_lone_surrogate_in_the_arguments_is_invalid_argument(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS)

    with pytest.raises(InvalidArgument, match="lone surrogate"):
        await stack.client.start_workflow("quick", ["\ud800"])

    await assert_others_still_run(stack)


async def test_workflow_result_over_max_payload_bytes_fails_it_and_get_and_list_still_work(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS, max_payload_bytes=10_000)
    small = await stack.client.start_workflow("returns", {"size": 100})
    big = await stack.client.start_workflow("returns", {"size": 20_000})

    failed = await wait_finished(stack.client, big.workflow_id)
    done = await wait_finished(stack.client, small.workflow_id)

    assert (done.status, done.result) == (WorkflowStatus.COMPLETED, "x" * 100)
    assert failed.status is WorkflowStatus.FAILED
    assert failed.result is None
    assert "the workflow returned a result of 20002 bytes; the limit is 10000 bytes" in (failed.error or "")
    listed = {w.id: w.status async for w in stack.client.list_workflows()}
    assert listed == {small.workflow_id: WorkflowStatus.COMPLETED, big.workflow_id: WorkflowStatus.FAILED}


@pytest.mark.parametrize("how", ["sys.exit", "KeyboardInterrupt"])
async def test_workflow_code_that_exits_fails_alone_and_the_coordinator_keeps_writing(
    make_stack: MakeStack, how: str
) -> None:
    stack = await make_stack(WORKFLOWS)
    bad = await stack.client.start_workflow("exits", {"how": how})

    failed = await wait_finished(stack.client, bad.workflow_id, within=60)

    assert failed.status is WorkflowStatus.FAILED
    expected = "SystemExit(3)" if how == "sys.exit" else "KeyboardInterrupt()"
    assert f"workflow code raised {expected}" in (failed.error or ""), failed.error
    assert "the workflow is failed instead" in (failed.error or "")
    await assert_others_still_run(stack)
    assert stack.coordinator.healthy() == (True, "serving")


async def test_blocking_workflow_code_does_not_stall_the_writer(make_stack: MakeStack) -> None:
    """While workflow code blocks, other writes (a start) go through: replay runs off the writer."""
    RELEASE.clear()
    ENTERED.clear()
    stack = await make_stack(WORKFLOWS, replay_timeout=300)
    try:
        blocked = await stack.client.start_workflow("blocks")
        assert await asyncio.to_thread(ENTERED.wait, 60), "the workflow code never ran"

        other = await stack.client.start_workflow("quick", {"n": 1})
        assert (await stack.client.get_workflow(other.workflow_id)).status is WorkflowStatus.RUNNING
        assert not RELEASE.is_set()
    finally:
        RELEASE.set()
    finished = await wait_finished(stack.client, blocked.workflow_id, within=60)
    assert (finished.status, finished.result) == (WorkflowStatus.COMPLETED, "unblocked"), finished.error
    assert (
        await wait_finished(stack.client, other.workflow_id, within=60)
    ).status is WorkflowStatus.COMPLETED


async def test_blocking_workflow_code_fails_its_workflow_after_the_replay_timeout(
    make_stack: MakeStack,
) -> None:
    RELEASE.clear()
    stack = await make_stack(WORKFLOWS, replay_timeout=3.0)
    try:
        blocked = await stack.client.start_workflow("blocks")
        failed = await wait_finished(stack.client, blocked.workflow_id, within=60)
        await assert_others_still_run(stack)
    finally:
        RELEASE.set()

    assert failed.status is WorkflowStatus.FAILED
    assert "did not finish replaying within 3s (--replay-timeout)" in (failed.error or ""), failed.error
    assert stack.coordinator.replay_runner.timeouts == 1
    assert stack.coordinator.healthy() == (True, "serving")


async def test_an_outcome_the_database_refuses_fails_that_workflow_and_the_rest_of_the_batch_is_written(
    make_stack: MakeStack,
) -> None:
    """The store's last line of defence: a write that fails for one workflow fails that workflow alone.

    The replays are driven by hand so that one outcome can carry text no database stores.
    """
    stack = await make_stack(WORKFLOWS)
    coordinator = await without_replay_loop(stack)
    good = await coordinator.start_workflows([("quick", "[1]", ""), ("quick", "[2]", "")])
    ids = [started.workflow_id for started in good]
    due = await coordinator._read(lambda c: coordinator.replays.due(c, 10))
    assert [item.workflow_id for item in due] == ids
    outcomes = {
        ids[0]: ReplayOutcome(StoredStatus.COMPLETED, result_json='"\ud800"'),
        ids[1]: ReplayOutcome(
            StoredStatus.RUNNING,
            new_steps=(NewStep(0, StepKind.SLEEP, "nap", '{"seconds":1}', wake_at_us=2**40),),
        ),
    }

    written = await coordinator._write(lambda c: coordinator.replays.apply(c, due, outcomes, 1), "test")

    assert written.finished == {StoredStatus.FAILED: 1}
    assert written.taken == 2
    rows = {row.id: row for row in await fetch(stack.database_url, sa.select(workflows))}
    assert rows[ids[0]].status == "failed"
    assert "could not store what this workflow's code produced" in rows[ids[0]].error
    assert rows[ids[1]].status == "running"
    assert await replay_rows(stack.database_url) == []


async def test_an_entry_whose_workflow_changed_after_it_was_read_is_left_for_the_next_pass(
    make_stack: MakeStack,
) -> None:
    """Replay runs between a read and a write: the write re-checks and applies nothing stale."""
    stack = await make_stack(WORKFLOWS)
    coordinator = await without_replay_loop(stack)
    (started,) = await coordinator.start_workflows([("quick", "[1]", "")])
    due = await coordinator._read(lambda c: coordinator.replays.due(c, 10))
    # As if a step had been added between the read and the write.
    stale = [dataclasses.replace(item, journal=(NOW_STEP,), step_count=1) for item in due]
    outcomes = {started.workflow_id: ReplayOutcome(StoredStatus.COMPLETED, result_json="1")}

    written = await coordinator._write(lambda c: coordinator.replays.apply(c, stale, outcomes, 1), "test")

    assert (written.left, written.taken, written.replayed) == (1, 0, 0)
    assert len(await fetch(stack.database_url, sa.select(replay_queue))) == 1
    assert (await stack.client.get_workflow(started.workflow_id)).status is WorkflowStatus.RUNNING
