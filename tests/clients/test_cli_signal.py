"""``conveyor signal`` against a live coordinator, on both databases: delivered, buffered, refused."""

from __future__ import annotations

import asyncio
from typing import Any

from cli_runs import run_in_one_interpreter
from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from support import eventually, registry_of
from toolkit import MakeStack, wait_finished


@workflow
async def two_approvals(ctx: WorkflowContext) -> list[Any]:
    return [await ctx.wait_for_signal("approval"), await ctx.wait_for_signal("approval")]


async def test_conveyor_signal_delivers_buffers_and_refuses_with_clear_messages(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(registry_of(two_approvals))
    workflow_id = (await stack.client.start_workflow("two_approvals", {})).workflow_id

    async def waiting() -> bool:
        explanation = await stack.client.explain_workflow(workflow_id)
        return [step.wait for step in explanation.steps] == ["signal"]

    await eventually(waiting)
    address = ["--coordinator", stack.server.address]
    delivered, buffered_json, not_json, unknown = await asyncio.to_thread(
        run_in_one_interpreter,
        [
            ["signal", workflow_id, "approval", "--payload", '{"by": "ana"}', *address],
            [
                "signal",
                workflow_id,
                "approval",
                "--payload",
                '"second"',
                "--idempotency-key",
                "k1",
                "--json",
                *address,
            ],
            ["signal", workflow_id, "approval", "--payload", "{oops", *address],
            ["signal", "no-such-workflow", "approval", *address],
        ],
        columns=200,
        timeout=120,
    )
    finished = await wait_finished(stack.client, workflow_id)

    assert delivered.code == 0, delivered.stderr
    assert f"signal 'approval' delivered: workflow {workflow_id} was waiting for it" in delivered.stdout
    assert buffered_json.code == 0, buffered_json.stderr
    assert buffered_json.json()["duplicate"] is False
    assert not_json.code != 0 and "--payload is not JSON" in not_json.stderr
    assert unknown.code != 0 and "no workflow with id 'no-such-workflow'" in unknown.stderr
    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == [{"by": "ana"}, "second"]
