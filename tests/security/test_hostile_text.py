"""Text and numbers the database cannot store, from each place they can come from.

PostgreSQL refuses NUL characters in text, names longer than their column, and
integers beyond 64 bits; SQLite takes them all. On PostgreSQL each of these once
made a transaction fail over and over (found by tests/security/test_fuzz.py and
probes after it): a workflow whose error held a NUL wedged every replay batch it
was in, a task failure message with a NUL made its executor retry the report
forever, and a year-10000 timestamp or a NUL in a filter was answered INTERNAL.
Now each is stored escaped, refused with INVALID_ARGUMENT, or fails its workflow
with a clear error, and everything else carries on.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from conveyor import RetryPolicy, WorkflowContext, task_handler, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.errors import InvalidArgument
from conveyor.v1 import admin_service_pb2 as admin_pb
from conveyor.v1 import common_pb2
from conveyor.v1 import executor_service_pb2 as executor_pb
from support import ManualExecutor, registry_of
from toolkit import MakeStack, RawStubs, handlers_of, rpc_error, step_rows, wait_finished


@task_handler("fails-with-nul")
def fails_with_nul(payload: object) -> None:
    raise ValueError("bad \x00 byte")


@workflow
async def calls_handler(ctx: WorkflowContext) -> object:
    return await ctx.task("fails-with-nul", {}, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01))


@workflow
async def raises_nul(ctx: WorkflowContext) -> object:
    raise ValueError("workflow \x00 error")


@workflow
async def names_a_step(ctx: WorkflowContext, name: str, kind: str) -> object:
    return await ctx.task(kind, {}, name=name)


@workflow
async def greet(ctx: WorkflowContext, who: str) -> str:
    return f"hello {who}"


@workflow
async def one_llm_step(ctx: WorkflowContext) -> str:
    return (await ctx.llm(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])).text


REGISTRY = registry_of(calls_handler, raises_nul, names_a_step, greet, one_llm_step)


async def test_a_workflow_failing_with_a_nul_in_its_error_fails_without_holding_up_others(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(REGISTRY)
    broken, fine = await stack.client.start_workflows([("raises_nul", {}), ("greet", {"who": "ada"})])
    failed = await wait_finished(stack.client, broken.workflow_id)
    completed = await wait_finished(stack.client, fine.workflow_id)
    assert failed.status is WorkflowStatus.FAILED
    assert "ValueError: workflow \\x00 error" in (failed.error or "")
    assert (completed.status, completed.result) == (WorkflowStatus.COMPLETED, "hello ada")


async def test_a_task_failure_message_with_a_nul_is_recorded_and_retried(make_stack: MakeStack) -> None:
    stack = await make_stack(REGISTRY)
    stack.start_executor(handlers=handlers_of(fails_with_nul), llm=False)
    started = await stack.client.start_workflow("calls_handler", {})
    failed = await wait_finished(stack.client, started.workflow_id)
    assert failed.status is WorkflowStatus.FAILED
    assert (
        failed.error
        == "step 0 ('fails-with-nul') failed: failed after 2 attempt(s): ValueError: bad \\x00 byte"
    )


@pytest.mark.parametrize(
    ("name", "kind", "problem"),
    [
        ("s" * 201, "k", "step name 'sss"),
        ("nul \x00 name", "k", "step name 'nul \\x00 name' must be 1 to 200 printable characters"),
        ("fine", "k" * 201, "ctx.task() kind 'kkk"),
    ],
    ids=["a step name over 200 characters", "a step name with a NUL", "a task kind over 200 characters"],
)
async def test_a_step_name_the_database_cannot_hold_fails_its_workflow_clearly(
    make_stack: MakeStack, name: str, kind: str, problem: str
) -> None:
    stack = await make_stack(REGISTRY)
    broken, fine = await stack.client.start_workflows(
        [("names_a_step", {"name": name, "kind": kind}), ("greet", {"who": "grace"})]
    )
    failed = await wait_finished(stack.client, broken.workflow_id)
    assert failed.status is WorkflowStatus.FAILED
    assert problem in (failed.error or "")
    assert (await wait_finished(stack.client, fine.workflow_id)).status is WorkflowStatus.COMPLETED


async def test_a_result_stamped_by_a_wild_executor_clock_is_still_applied(make_stack: MakeStack) -> None:
    stack = await make_stack(REGISTRY)
    started = await stack.client.start_workflow("one_llm_step", {})
    async with ManualExecutor(stack.server.address, "wild-clock") as executor:
        await executor.connect(free_slots=1)
        [task] = await executor.take(1)
        result = executor.success(task, '{"content": [{"type": "text", "text": "hey"}]}')
        result.started_at.CopyFrom(Timestamp(seconds=2**62))
        assert await executor.report(result) == [executor_pb.RESULT_DISPOSITION_ACCEPTED]
    finished = await wait_finished(stack.client, started.workflow_id)
    assert (finished.status, finished.result) == (WorkflowStatus.COMPLETED, "hey")
    [step] = await step_rows(stack.database_url, started.workflow_id)
    assert step.started_at is not None  # the claim time stands in for the executor's
    assert step.started_at < 2**62


async def test_a_filter_with_a_nul_and_a_timestamp_past_year_9999_are_refused(make_stack: MakeStack) -> None:
    stack = await make_stack(REGISTRY)
    with pytest.raises(InvalidArgument, match="name '\\\\x00' must be printable"):
        await stack.client.count_workflows("\x00")
    async with RawStubs(stack.server.address) as stubs:
        refused = await rpc_error(
            stubs.admin.CancelWorkflows(
                admin_pb.CancelWorkflowsRequest(
                    shards=common_pb2.ShardSelector(all_shards=True),
                    started_before=Timestamp(seconds=-(2**63)),
                ),
                timeout=10,
            )
        )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "started_before" in (refused.details() or "") and "between the years 1 and 9999" in (
        refused.details() or ""
    )
