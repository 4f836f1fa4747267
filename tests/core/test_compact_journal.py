"""An agent loop through a real coordinator and executor stores a linear journal (issue 12,
item 4), while executors, GetWorkflow and replay still see each step's full arguments."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from conveyor import RetryPolicy, WorkflowContext, task_handler, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.model import canonical_json
from conveyor.coordinator.store.schema import blobs, steps
from conveyor.testing.simulator.messages import MessagesRequest
from support import eventually, registry_of
from toolkit import MakeStack, fetch, handlers_of, restart_coordinator, step_rows, wait_finished

SYSTEM = "You are a careful research agent; cite every source. " * 20
NO_RETRY = RetryPolicy(max_attempts=1, initial_backoff=0.05)


def tool_result(turn: int) -> dict[str, str]:
    return {"role": "user", "content": f"tool result {turn}: " + "r" * 120}


def reply(request: MessagesRequest) -> str:
    return f"after {len(request.messages)} messages " + "a" * 100


@workflow
async def agent_loop(ctx: WorkflowContext, turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for turn in range(turns):
        messages.append(tool_result(turn))
        answer = await ctx.llm(
            model="sim", max_tokens=64, system=SYSTEM, messages=messages, name=f"turn{turn}"
        )
        messages.append({"role": "assistant", "content": answer.text})
    return messages


@workflow(name="gated_loop")
async def gated_loop_v1(ctx: WorkflowContext) -> str:
    messages: list[dict[str, Any]] = []
    for turn in range(8):
        messages.append(tool_result(turn))
        answer = await ctx.llm(
            model="sim", max_tokens=64, system=SYSTEM, messages=messages, name=f"turn{turn}"
        )
        messages.append({"role": "assistant", "content": answer.text})
    await ctx.task("gate", len(messages), name="gate", retry=NO_RETRY)
    return "v1"


@workflow(name="gated_loop")
async def gated_loop_v2(ctx: WorkflowContext) -> str:
    """v1, except that from turn 5 on the first message of the history reads differently."""
    messages: list[dict[str, Any]] = []
    for turn in range(8):
        messages.append(tool_result(turn))
        if turn == 5:
            messages[0] = {"role": "user", "content": messages[0]["content"] + "."}
        answer = await ctx.llm(
            model="sim", max_tokens=64, system=SYSTEM, messages=messages, name=f"turn{turn}"
        )
        messages.append({"role": "assistant", "content": answer.text})
    await ctx.task("gate", len(messages), name="gate", retry=NO_RETRY)
    return "v2"


@task_handler("gate")
async def gate(payload: Any) -> Any:
    return payload


async def stored_chars(url: str, workflow_id: str) -> int:
    """The journal's step arguments as stored: args and digests, and the parts with their keys."""
    length = sa.func.length
    [in_steps] = await fetch(
        url,
        sa.select(sa.func.sum(length(steps.c.args) + sa.func.coalesce(length(steps.c.args_digest), 0))).where(
            steps.c.workflow_id == workflow_id
        ),
    )
    [in_parts] = await fetch(
        url,
        sa.select(
            sa.func.sum(
                length(blobs.c.body) + length(blobs.c.digest) + sa.func.coalesce(length(blobs.c.parent), 0)
            )
        ).where(blobs.c.workflow_id == workflow_id),
    )
    return int(in_steps[0] or 0) + int(in_parts[0] or 0)


async def test_a_150_turn_loop_stores_a_linear_journal_and_every_reader_sees_full_arguments(
    make_stack: MakeStack,
) -> None:
    turns = 150
    stack = await make_stack(registry_of(agent_loop))
    stack.replies = reply
    await stack.start_simulator()
    stack.start_executor()
    started = await stack.client.start_workflow("agent_loop", {"turns": turns})

    finished = await wait_finished(stack.client, started.workflow_id, within=300)

    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    conversation = finished.result
    assert len(conversation) == 2 * turns
    # What the old journal held: each step's whole request.
    requests = [
        canonical_json(
            {"model": "sim", "max_tokens": 64, "system": SYSTEM, "messages": conversation[: 2 * turn + 1]}
        )
        for turn in range(turns)
    ]
    final_conversation = len(canonical_json(conversation))
    stored = await stored_chars(stack.database_url, started.workflow_id)
    assert sum(map(len, requests)) > 50 * final_conversation
    assert stored <= 3 * final_conversation, (stored, final_conversation)
    # The executor sent the LLM each step's full history...
    assert [request.body["messages"] for request in stack.llm_requests] == [
        json.loads(text)["messages"] for text in requests
    ]
    # ...and GetWorkflow shows each step's full arguments.
    shown = await stack.client.get_workflow(started.workflow_id, include_steps=True)
    assert [canonical_json(step.args) for step in shown.steps] == requests


async def test_changing_one_old_message_of_a_compacted_step_is_non_determinism(make_stack: MakeStack) -> None:
    """Only step 5's history differs, and only in its first message: replay compares the
    SHA-256 of the full arguments, so it notices what a comparison of the recent end would not."""
    stack = await make_stack(registry_of(gated_loop_v1))
    stack.replies = reply
    await stack.start_simulator()
    stack.start_executor()  # serves LLM steps, not "gate": the workflow waits there
    started = await stack.client.start_workflow("gated_loop")

    async def gate_started() -> bool:
        return [row.name for row in await step_rows(stack.database_url, started.workflow_id)][-1:] == ["gate"]

    await eventually(gate_started, timeout=60)
    journal = await step_rows(stack.database_url, started.workflow_id)
    assert journal[5].args_digest is not None  # step 5 is stored compacted
    await restart_coordinator(stack, registry_of(gated_loop_v2))
    stack.start_executor(handlers=handlers_of(gate), llm=False)

    failed = await wait_finished(stack.client, started.workflow_id, within=60)

    assert failed.status is WorkflowStatus.FAILED, failed.result
    assert (failed.error or "").startswith(
        "non-determinism at step 5: the workflow asked for llm step 'turn5' but its arguments changed"
    ), failed.error
