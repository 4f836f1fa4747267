"""Idempotency keys of StartWorkflow: scoped per workflow name, and checked against the arguments.

The rule (as Temporal's workflow-id reuse policy): the same name, key and arguments return the
workflow the first start made; the same name and key with other arguments are refused with
ALREADY_EXISTS, saying where the arguments differ; the same key under another name starts a
workflow of its own. Before, a key was global and arguments were ignored, so a start of one
workflow could silently return another's.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.errors import AlreadyExists, RpcError
from conveyor.v1 import workflow_service_pb2
from support import registry_of
from toolkit import MakeStack, RawStubs, rpc_error, snapshot, wait_finished


@workflow
async def greet(ctx: WorkflowContext, name: str, punctuation: str = "") -> str:
    return f"hello {name}{punctuation}"


@workflow
async def shout(ctx: WorkflowContext, name: str) -> str:
    return f"HEY {name.upper()}"


WORKFLOWS = registry_of(greet, shout)


async def test_the_same_name_key_and_arguments_return_the_first_workflow(make_stack: MakeStack) -> None:
    """Arguments compare as canonical JSON: key order and spacing do not matter."""
    stack = await make_stack(WORKFLOWS)
    first = await stack.client.start_workflow(
        "greet", {"name": "ada", "punctuation": "!"}, idempotency_key="k"
    )
    await wait_finished(stack.client, first.workflow_id)
    before = await snapshot(stack.database_url)

    again = await stack.client.start_workflow(
        "greet", '{ "punctuation" : "!",  "name": "ada" }', idempotency_key="k"
    )

    assert (again.workflow_id, again.already_existed) == (first.workflow_id, True)
    assert await snapshot(stack.database_url) == before


async def test_the_same_key_with_other_arguments_is_already_exists_saying_what_differs(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(WORKFLOWS)
    first = await stack.client.start_workflow("greet", {"name": "ada"}, idempotency_key="k")
    await wait_finished(stack.client, first.workflow_id)
    before = await snapshot(stack.database_url)

    with pytest.raises(AlreadyExists) as refused:
        await stack.client.start_workflow("greet", {"name": "bob"}, idempotency_key="k")
    message = refused.value.message
    assert f"idempotency key 'k' already started 'greet' workflow {first.workflow_id}" in message
    assert 'at $.name: stored "ada", this request has "bob"' in message
    assert "Send the same arguments to get that workflow back, or use a new key" in message

    with pytest.raises(AlreadyExists, match=r'at \$\.punctuation: not stored, this request has "\?"'):
        await stack.client.start_workflow("greet", {"name": "ada", "punctuation": "?"}, idempotency_key="k")
    async with RawStubs(stack.server.address) as stubs:
        request = workflow_service_pb2.StartWorkflowRequest(
            name="greet", args_json='["ada", "!"]', idempotency_key="k"
        )
        error = await rpc_error(stubs.workflows.StartWorkflow(request))
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert await snapshot(stack.database_url) == before


async def test_a_key_belongs_to_its_workflow_name(make_stack: MakeStack) -> None:
    """Another workflow started with the same key is a workflow of its own, with its own result."""
    stack = await make_stack(WORKFLOWS)
    greeting = await stack.client.start_workflow("greet", {"name": "ada"}, idempotency_key="order-7")
    shouting = await stack.client.start_workflow("shout", {"name": "ada"}, idempotency_key="order-7")

    assert not shouting.already_existed
    assert shouting.workflow_id != greeting.workflow_id
    assert (await wait_finished(stack.client, greeting.workflow_id)).result == "hello ada"
    assert (await wait_finished(stack.client, shouting.workflow_id)).result == "HEY ADA"
    again = await stack.client.start_workflow("shout", {"name": "ada"}, idempotency_key="order-7")
    assert (again.workflow_id, again.already_existed) == (shouting.workflow_id, True)


async def test_a_batch_with_a_key_reused_with_other_arguments_starts_nothing(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    before = await snapshot(stack.database_url)

    with pytest.raises(AlreadyExists, match=r"^workflow #2: idempotency key 'batch-key' already started"):
        await stack.client.start_workflows(
            [
                ("greet", {"name": "a"}, "batch-key"),
                ("shout", {"name": "b"}),
                ("greet", {"name": "c"}, "batch-key"),
            ]
        )

    assert await snapshot(stack.database_url) == before
    started = await stack.client.start_workflows(
        [
            ("greet", {"name": "a"}, "batch-key"),
            ("shout", {"name": "a"}, "batch-key"),
            ("greet", '{"name":"a"}', "batch-key"),
        ]
    )
    assert [s.already_existed for s in started] == [False, False, True]
    assert started[2].workflow_id == started[0].workflow_id != started[1].workflow_id


async def test_concurrent_starts_with_one_key_make_exactly_one_workflow(make_stack: MakeStack) -> None:
    """Twenty clients race with the same key: one workflow; the same arguments get it, others are refused."""
    stack = await make_stack(WORKFLOWS)
    same = await asyncio.gather(
        *(stack.client.start_workflow("greet", {"name": "ada"}, idempotency_key="race") for _ in range(20))
    )
    assert len({s.workflow_id for s in same}) == 1
    assert sorted(s.already_existed for s in same) == [False] + [True] * 19

    other: list[object] = await asyncio.gather(
        *(stack.client.start_workflow("shout", {"name": f"n{i}"}, idempotency_key="race") for i in range(20)),
        return_exceptions=True,
    )
    winners = [outcome for outcome in other if not isinstance(outcome, BaseException)]
    refusals = [outcome for outcome in other if isinstance(outcome, RpcError)]
    assert len(winners) == 1 and len(refusals) == 19, other
    assert all(isinstance(refusal, AlreadyExists) for refusal in refusals)
    counts = await stack.client.count_workflows()
    assert sum(counts.values()) == 2
    winner = await wait_finished(stack.client, winners[0].workflow_id)  # type: ignore[attr-defined]
    assert winner.status is WorkflowStatus.COMPLETED
