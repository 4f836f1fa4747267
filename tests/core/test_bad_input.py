"""Bad input from clients and executors: a clear gRPC status, and nothing stored changes.

The brief's bar for every feature: bad input gets ``INVALID_ARGUMENT`` /
``NOT_FOUND`` / ``FAILED_PRECONDITION`` with a readable message, and nothing
already stored is lost or corrupted. So each refused request is checked twice:
its status and message, and a byte-for-byte comparison of the workflow-state
tables before and after.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from conveyor import RetryPolicy, WorkflowContext, task_handler, workflow
from conveyor.client.client import AsyncClient
from conveyor.client.models import WorkflowStatus
from conveyor.errors import FailedPrecondition, InvalidArgument, NotFound, RpcError
from conveyor.v1 import common_pb2, workflow_service_pb2
from conveyor.v1 import executor_service_pb2 as executor_pb
from support import Stack, eventually, registry_of
from toolkit import MakeStack, RawStubs, handlers_of, rpc_error, snapshot, step_rows, task_rows, wait_finished

MAX_PAYLOAD = 16_384
NO_RETRY = RetryPolicy(max_attempts=1, initial_backoff=0.05)
#: Valid JSON nested deeper than Python's json module can decode (RecursionError).
DEEPLY_NESTED = "[" * 5000 + "]" * 5000


@workflow
async def greet(ctx: WorkflowContext, name: str) -> str:
    return f"hello {name}"


@workflow
async def stuck(ctx: WorkflowContext, item: int) -> Any:
    return await ctx.task("unserved", item, retry=NO_RETRY)


@workflow
async def held_once(ctx: WorkflowContext, item: int) -> Any:
    return await ctx.task("held", item, retry=NO_RETRY)


WORKFLOWS = registry_of(greet, stuck, held_once)


@dataclass(frozen=True)
class Stored:
    completed_id: str
    running_id: str


async def with_stored_state(stack: Stack) -> Stored:
    """A finished workflow and a running one with a queued task: state that bad requests must not touch."""
    done = await stack.client.start_workflow("greet", {"name": "ada"}, idempotency_key="first-greeting")
    running = await stack.client.start_workflow("stuck", {"item": 1})
    assert (await wait_finished(stack.client, done.workflow_id)).status is WorkflowStatus.COMPLETED
    await eventually(lambda: task_rows(stack.database_url, running.workflow_id))
    return Stored(done.workflow_id, running.workflow_id)


Call = Callable[[AsyncClient, Stored], Awaitable[Any]]


@dataclass(frozen=True)
class BadCall:
    call: Call
    error: type[RpcError]
    message: str


BAD_CALLS: dict[str, BadCall] = {
    "unknown workflow name": BadCall(
        lambda c, s: c.start_workflow("no_such_workflow", {}),
        InvalidArgument,
        "unknown workflow 'no_such_workflow'; this coordinator runs: greet, held_once, stuck",
    ),
    "malformed JSON args": BadCall(
        lambda c, s: c.start_workflow("greet", '{"name": "ada"'),
        InvalidArgument,
        "args_json is not valid JSON",
    ),
    "args that miss a parameter": BadCall(
        lambda c, s: c.start_workflow("greet", {"nmae": "ada"}),
        InvalidArgument,
        "arguments do not fit workflow 'greet'",
    ),
    "too many positional args": BadCall(
        lambda c, s: c.start_workflow("greet", ["ada", "lovelace"]),
        InvalidArgument,
        "arguments do not fit workflow 'greet'",
    ),
    "a JSON scalar as args": BadCall(
        lambda c, s: c.start_workflow("greet", "42"),
        InvalidArgument,
        "args_json must be a JSON object (keyword arguments) or array (positional arguments), not int",
    ),
    "NaN in args": BadCall(
        lambda c, s: c.start_workflow("greet", '{"name": NaN}'), InvalidArgument, "a value JSON cannot carry"
    ),
    "args nested too deep to decode": BadCall(
        lambda c, s: c.start_workflow("greet", '{"name": ' + DEEPLY_NESTED + "}"),
        InvalidArgument,
        "args_json is nested too deeply to decode",
    ),
    "oversized args": BadCall(
        lambda c, s: c.start_workflow("greet", {"name": "x" * MAX_PAYLOAD}),
        InvalidArgument,
        f"bytes; the limit is {MAX_PAYLOAD} bytes",
    ),
    "one bad entry in a batch": BadCall(
        lambda c, s: c.start_workflows(
            [("greet", {"name": "a"}), ("greet", {"bad": 1}), ("greet", {"name": "c"})]
        ),
        InvalidArgument,
        "workflow #1: arguments do not fit workflow 'greet'",
    ),
    "an empty batch": BadCall(lambda c, s: c.start_workflows([]), InvalidArgument, "no workflows to start"),
    "a batch over max_start_batch": BadCall(
        lambda c, s: c.start_workflows([("greet", {"name": str(i)}) for i in range(4)]),
        InvalidArgument,
        "4 workflows in one call; the limit is 3",
    ),
    "a too-long workflow name": BadCall(
        lambda c, s: c.start_workflow("w" * 201, {}),
        InvalidArgument,
        "workflow name is 201 characters long; the limit is 200",
    ),
    "a too-long idempotency key": BadCall(
        lambda c, s: c.start_workflow("greet", {"name": "a"}, idempotency_key="k" * 201),
        InvalidArgument,
        "idempotency_key is 201 characters long; the limit is 200",
    ),
    "an idempotency key with surrounding whitespace": BadCall(
        lambda c, s: c.start_workflow("greet", {"name": "a"}, idempotency_key=" key "),
        InvalidArgument,
        "must be printable, without surrounding whitespace",
    ),
    "GetWorkflow of an unknown id": BadCall(
        lambda c, s: c.get_workflow("0" * 32), NotFound, f"no workflow with id {'0' * 32!r}"
    ),
    "GetWorkflow without an id": BadCall(
        lambda c, s: c.get_workflow(""), InvalidArgument, "workflow_id is required"
    ),
    "CancelWorkflow of an unknown id": BadCall(
        lambda c, s: c.cancel_workflow("f" * 32), NotFound, f"no workflow with id {'f' * 32!r}"
    ),
    "CancelWorkflow of a finished workflow": BadCall(
        lambda c, s: c.cancel_workflow(s.completed_id),
        FailedPrecondition,
        "already finished (completed); nothing to cancel",
    ),
    "a page token that is not base64": BadCall(
        lambda c, s: c.list_workflows_page(page_token="not a token!"),
        InvalidArgument,
        "page_token 'not a token!' is not one this server issued",
    ),
    "a page token of another version": BadCall(
        lambda c, s: c.list_workflows_page(page_token=base64.urlsafe_b64encode(b"v2:12").decode()),
        InvalidArgument,
        "is not one this server issued",
    ),
    "a page token without a number": BadCall(
        lambda c, s: c.list_workflows_page(page_token=base64.urlsafe_b64encode(b"v1:soon").decode()),
        InvalidArgument,
        "is not one this server issued",
    ),
    "a page size over 1000": BadCall(
        lambda c, s: c.list_workflows_page(page_size=1001),
        InvalidArgument,
        "page_size must be between 1 and 1000",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS), ids=list(BAD_CALLS))
async def test_bad_request_gets_a_clear_status_and_changes_nothing_stored(
    make_stack: MakeStack, case: str
) -> None:
    """Each malformed request is refused with the right status and a message naming the problem."""
    bad = BAD_CALLS[case]
    stack = await make_stack(WORKFLOWS, max_payload_bytes=MAX_PAYLOAD, max_start_batch=3)
    stored = await with_stored_state(stack)
    before = await snapshot(stack.database_url)

    with pytest.raises(bad.error) as raised:
        await bad.call(stack.client, stored)

    assert type(raised.value) is bad.error
    assert bad.message in raised.value.message
    assert await snapshot(stack.database_url) == before
    # The coordinator is unharmed: it still starts and finishes work.
    again = await stack.client.start_workflow("greet", {"name": "bob"})
    assert (await wait_finished(stack.client, again.workflow_id)).result == "hello bob"


async def test_list_workflows_with_a_status_outside_the_enum_is_invalid(make_stack: MakeStack) -> None:
    """Clients in other languages can send any enum number; unknown statuses are refused, not ignored."""
    stack = await make_stack(WORKFLOWS)
    await with_stored_state(stack)
    before = await snapshot(stack.database_url)
    async with RawStubs(stack.server.address) as stubs:
        for wire in (common_pb2.WORKFLOW_STATUS_UNSPECIFIED, 99):
            error = await rpc_error(
                stubs.workflows.ListWorkflows(workflow_service_pb2.ListWorkflowsRequest(statuses=[wire]))
            )
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert f"statuses holds {wire}, which is not a workflow status" in (error.details() or "")
    assert await snapshot(stack.database_url) == before


# ---------------------------------------------------------------------------- idempotency


async def test_repeated_idempotency_key_returns_the_first_workflow_and_starts_nothing(
    make_stack: MakeStack,
) -> None:
    """A client retrying a start must not run the work twice (other arguments: test_idempotency_keys.py)."""
    stack = await make_stack(WORKFLOWS)
    stored = await with_stored_state(stack)
    before = await snapshot(stack.database_url)

    again = await stack.client.start_workflow("greet", {"name": "ada"}, idempotency_key="first-greeting")
    in_batch = await stack.client.start_workflows([("greet", {"name": "ada"}, "first-greeting")])

    assert (again.workflow_id, again.already_existed) == (stored.completed_id, True)
    assert [(s.workflow_id, s.already_existed) for s in in_batch] == [(stored.completed_id, True)]
    assert await snapshot(stack.database_url) == before
    assert (await stack.client.get_workflow(stored.completed_id)).result == "hello ada"


async def test_a_key_repeated_within_one_batch_starts_one_workflow(make_stack: MakeStack) -> None:
    """Within one StartWorkflows call the second use of a key refers to the first, new workflow."""
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflows(
        [
            ("greet", {"name": "a"}, "batch-key"),
            ("greet", {"name": "b"}),
            ("greet", {"name": "a"}, "batch-key"),
        ]
    )
    assert [s.already_existed for s in started] == [False, False, True]
    assert started[2].workflow_id == started[0].workflow_id
    assert started[1].workflow_id != started[0].workflow_id
    results = [(await wait_finished(stack.client, s.workflow_id)).result for s in started]
    assert results == ["hello a", "hello b", "hello a"]
    report = await stack.client.diagnose()
    assert dict(report.workflows_by_status) == {"completed": 2}


# ------------------------------------------------------------------------ RecordResults


@dataclass(frozen=True)
class Claimed:
    workflow_id: str
    task_id: int
    fencing_token: int
    executor_id: str
    release: asyncio.Event


#: These tests send results for a task a real executor holds; its lease must outlast a loaded
#: machine's stalls (the test kit's 2 s, meant for tests of expiry, ran out once under two CI runs
#: and the result under test came back stale).
HELD_LEASE_TTL = 30.0


async def claimed_by_a_real_executor(stack: Stack) -> Claimed:
    """A task held by a real executor (its handler waits for ``release``), and its lease as stored."""
    release = asyncio.Event()

    @task_handler("held")
    async def held(payload: Any) -> Any:
        await release.wait()
        return {"handled": payload}

    executor = stack.start_executor(handlers=handlers_of(held), llm=False)
    started = await stack.client.start_workflow("held_once", {"item": 3})

    async def claimed() -> Any:
        rows = await task_rows(stack.database_url, started.workflow_id)
        return rows[0] if rows and rows[0].claimed_by else None

    row = await eventually(claimed)
    assert row.claimed_by == executor.config.executor_id
    return Claimed(started.workflow_id, row.id, row.fencing_token, row.claimed_by, release)


def success(claim: Claimed, result_json: str = '{"forged": true}') -> executor_pb.TaskResult:
    return executor_pb.TaskResult(
        task_id=claim.task_id, fencing_token=claim.fencing_token, result_json=result_json
    )


async def test_record_results_abuse_is_refused_whole_and_applies_nothing(make_stack: MakeStack) -> None:
    """Oversized batches or a missing executor id refuse the whole batch.

    Each batch carries an otherwise valid result for the claimed task: had any of
    it been applied, the step would have completed with the forged value. (A single
    malformed result is refused alone: test_a_malformed_result_is_refused_alone_and_the_rest_applied.)
    """
    stack = await make_stack(WORKFLOWS, max_batch_size=5, lease_ttl=HELD_LEASE_TTL)
    claim = await claimed_by_a_real_executor(stack)
    before = await snapshot(stack.database_url)
    abuses = {
        "too many results": (
            executor_pb.RecordResultsRequest(executor_id=claim.executor_id, results=[success(claim)] * 6),
            "6 results in one call; the limit is 5",
        ),
        "no executor id": (
            executor_pb.RecordResultsRequest(results=[success(claim)]),
            "executor_id is required",
        ),
    }
    async with RawStubs(stack.server.address) as stubs:
        for label, (request, message) in abuses.items():
            error = await rpc_error(stubs.executors.RecordResults(request))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, label
            assert message in (error.details() or ""), (label, error.details())
            assert await snapshot(stack.database_url) == before, label

    claim.release.set()
    finished = await wait_finished(stack.client, claim.workflow_id)
    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == {"handled": 3}


@pytest.mark.parametrize(
    ("result_json", "expected"),
    [
        ('{"unterminated": ', "the executor returned a result that is not JSON"),
        (json.dumps("x" * MAX_PAYLOAD), f"bytes; the limit is {MAX_PAYLOAD} bytes"),
        (DEEPLY_NESTED, "the executor returned a result nested too deeply to decode"),
    ],
    ids=["malformed", "too large", "nested too deep"],
)
async def test_unacceptable_result_payload_fails_the_step_instead_of_leaving_it_stuck(
    make_stack: MakeStack, result_json: str, expected: str
) -> None:
    """A result the coordinator cannot store is accepted as a failure, so the workflow moves on."""
    stack = await make_stack(WORKFLOWS, max_payload_bytes=MAX_PAYLOAD, lease_ttl=HELD_LEASE_TTL)
    claim = await claimed_by_a_real_executor(stack)
    async with RawStubs(stack.server.address) as stubs:
        response = await stubs.executors.RecordResults(
            executor_pb.RecordResultsRequest(
                executor_id=claim.executor_id, results=[success(claim, result_json)]
            )
        )
    assert list(response.dispositions) == [executor_pb.RESULT_DISPOSITION_ACCEPTED]

    finished = await wait_finished(stack.client, claim.workflow_id)
    assert finished.status is WorkflowStatus.FAILED
    assert "step 0 ('held') failed" in finished.error
    assert expected in finished.error
    (step,) = await step_rows(stack.database_url, claim.workflow_id)
    assert (step.status, step.result) == ("failed", None)
    assert await task_rows(stack.database_url) == []

    # The real executor's own report comes later (same lease): a duplicate, not a second outcome.
    claim.release.set()
    await eventually(lambda: stack.coordinator.stats.results_duplicate == 1)
    assert (await stack.client.get_workflow(claim.workflow_id)).status is WorkflowStatus.FAILED
    report = await stack.client.diagnose()
    assert list(report.violations) == []
