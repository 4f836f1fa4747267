"""Numbers and text past what the database or Python can hold get a status that blames the
request, never INTERNAL, over real gRPC on SQLite and PostgreSQL; a refused Hello leaves no
executor session behind.

Each value here once reached the database or a Python limit unchecked: integers of thousands
of digits in JSON (past Python's int-string conversion limit), page tokens carrying numbers
outside BIGINT, a RATE_LIMITED ``retry_after`` far in the past, and task kinds that together
name a pool longer than its column.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.retries import MAX_RATE_LIMIT_WAIT, RATE_LIMIT_JITTER
from conveyor.v1 import admin_service_pb2 as admin_pb
from conveyor.v1 import admin_service_pb2_grpc, common_pb2, workflow_service_pb2_grpc
from conveyor.v1 import executor_service_pb2 as executor_pb
from conveyor.v1 import workflow_service_pb2 as workflow_pb
from support import ManualExecutor, eventually, registry_of
from toolkit import MakeStack, snapshot, task_rows

ACCEPTED = executor_pb.RESULT_DISPOSITION_ACCEPTED
#: Past Python's default limit of 4,300 digits for converting between int and str.
HUGE_INTEGER = "7" * 5000


@workflow
async def greet(ctx: WorkflowContext, name: Any) -> str:
    answer = await ctx.llm(model="m", max_tokens=20, messages=[{"role": "user", "content": f"hi {name}"}])
    return answer.text


REGISTRY = registry_of(greet)


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_huge_integer_in_args_json_is_invalid_argument(make_stack: MakeStack) -> None:
    stack = await make_stack(REGISTRY)
    before = await snapshot(stack.database_url)
    async with grpc.aio.insecure_channel(stack.server.address) as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        codes = {
            args: await code_of(
                stub.StartWorkflow(workflow_pb.StartWorkflowRequest(name="greet", args_json=args), timeout=20)
            )
            for args in (
                f'{{"name": {HUGE_INTEGER}}}',
                f'{{"name": -{HUGE_INTEGER}}}',
                '{"name": 1e400}',  # a float that overflows to infinity
            )
        }
    assert set(codes.values()) == {grpc.StatusCode.INVALID_ARGUMENT}, codes
    assert await snapshot(stack.database_url) == before


async def test_a_result_holding_a_huge_integer_fails_its_step_not_the_call(make_stack: MakeStack) -> None:
    stack = await make_stack(REGISTRY)
    started = await stack.client.start_workflow("greet", {"name": "ada"})
    async with ManualExecutor(stack.server.address, "m1") as executor:
        await executor.connect(free_slots=1)
        [task] = await executor.take(1, within=30)
        result = executor.success(task, f'{{"content": [{{"type": "text", "text": {HUGE_INTEGER}}}]}}')
        assert await executor.report(result) == [ACCEPTED]
    finished = await stack.client.wait(started.workflow_id, timeout=60, poll_interval=0.05)
    assert finished.status == WorkflowStatus.FAILED
    assert "digits" in (finished.error or ""), finished.error


@pytest.mark.parametrize(
    ("number", "in_range"),
    [
        (str(2**63), False),
        (str(-(2**63) - 1), False),
        ("9" * 5000, False),
        (str(2**63 - 1), True),
        (str(-(2**63)), True),
    ],
)
async def test_a_page_token_holding_any_number_is_answered_properly(
    make_stack: MakeStack, number: str, in_range: bool
) -> None:
    stack = await make_stack(REGISTRY)
    await stack.client.start_workflow("greet", {"name": "ada"})
    token = base64.urlsafe_b64encode(f"v1:{number}".encode()).decode()
    async with grpc.aio.insecure_channel(stack.server.address) as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        codes = {
            newest_first: await code_of(
                stub.ListWorkflows(
                    workflow_pb.ListWorkflowsRequest(
                        page_token=token, newest_first=newest_first, page_size=5
                    ),
                    timeout=20,
                )
            )
            for newest_first in (False, True)
        }
    expected = grpc.StatusCode.OK if in_range else grpc.StatusCode.INVALID_ARGUMENT
    assert codes == {False: expected, True: expected}


@pytest.mark.parametrize("seconds", [-(2**62), -1, 2**62])
async def test_a_rate_limited_retry_after_is_clamped_at_both_ends(
    make_stack: MakeStack, seconds: int
) -> None:
    """A wait in the past means "now", one in the far future "look again after the maximum"."""
    stack = await make_stack(REGISTRY)
    started = await stack.client.start_workflow("greet", {"name": "ada"})
    async with ManualExecutor(stack.server.address, "m1") as executor:
        await executor.connect(free_slots=1)
        [task] = await executor.take(1, within=30)
        reported_at = time.time()
        failure = executor_pb.TaskResult(
            task_id=task.task_id,
            fencing_token=task.fencing_token,
            failure=executor_pb.TaskFailure(
                error_class=common_pb2.ERROR_CLASS_RATE_LIMITED,
                message="429",
                retry_after=Duration(seconds=seconds),
            ),
        )
        assert await executor.report(failure) == [ACCEPTED]
        [row] = await task_rows(stack.database_url, started.workflow_id)
        wait = row.available_at / 1e6 - reported_at
        if seconds < 0:
            assert row.claimed_by is None and wait < 60
            await executor.credit(1)  # retried at once: the same task comes back
            [again] = await executor.take(1, within=30)
            assert again.task_id == task.task_id
        else:
            assert 0 < wait <= MAX_RATE_LIMIT_WAIT * (1 + RATE_LIMIT_JITTER) + 1


async def test_a_hello_whose_task_kinds_name_too_long_a_pool_is_refused_and_leaves_no_session(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(REGISTRY)
    kinds = [f"kind-{number:03}" for number in range(30)]  # each fine, 269 characters joined
    before = await snapshot(stack.database_url)
    async with ManualExecutor(stack.server.address, "wide", task_kinds=kinds) as wide:
        with pytest.raises(AssertionError, match="INVALID_ARGUMENT") as refused:
            await wide.connect(within=30)
        assert "task_kinds" in str(refused.value)
    async with grpc.aio.insecure_channel(stack.server.address) as channel:
        report = await admin_service_pb2_grpc.AdminServiceStub(channel).Diagnose(
            admin_pb.DiagnoseRequest(), timeout=20
        )
    assert [executor.executor_id for executor in report.executors] == []
    assert await snapshot(stack.database_url) == before
    # An ordinary executor then gets every shard (none is held by a ghost).
    async with ManualExecutor(stack.server.address, "narrow") as narrow:
        await narrow.connect()
        await eventually(
            lambda: narrow.assignments and len(narrow.assignments[-1]) == stack.coordinator.shard_count
        )


async def test_a_failure_after_an_executor_is_registered_unregisters_it(
    make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails once a Hello's session is registered, the session goes with the stream:
    no ghost keeps shards and credits until its lease expires."""
    stack = await make_stack(REGISTRY)
    coordinator = stack.coordinator

    save_leases = coordinator.membership.save_leases
    failures = []

    async def fails_once(changed_pools: Any) -> None:
        if not failures:
            failures.append(changed_pools)
            raise RuntimeError("injected: saving the shard leases failed after registration")
        await save_leases(changed_pools)

    monkeypatch.setattr(coordinator.membership, "save_leases", fails_once)
    async with ManualExecutor(stack.server.address, "unlucky") as unlucky:
        with pytest.raises(AssertionError):
            await unlucky.connect(within=30)
    assert failures, "the injected failure happened"
    assert coordinator.sessions.get("unlucky") is None
    assert not any(
        executor_id == "unlucky"
        for pool in coordinator.sessions.leases().values()
        for executor_id in pool.values()
    )
