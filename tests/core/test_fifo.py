"""FIFO claims: the oldest workflow's work goes first, across steps and across shards.

Driven by a manual executor that takes one task at a time, so the order in which the
coordinator hands tasks out is observable exactly, not inferred from timings.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

from conveyor import WorkflowContext, workflow
from conveyor.coordinator.model import ClaimOrder
from conveyor.v1 import executor_service_pb2 as executor_pb
from support import ManualExecutor, Stack, eventually, llm_message_json, registry_of

ACCEPTED = executor_pb.RESULT_DISPOSITION_ACCEPTED


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@workflow
async def four_steps(ctx: WorkflowContext, topic: str) -> str:
    """The seed's shape: extract, two analyses in parallel, summarize."""
    extract = await ctx.llm(model="sim", max_tokens=50, name="extract", messages=_ask(topic))
    a, b = await asyncio.gather(
        ctx.llm(model="sim", max_tokens=50, name="analyze_a", messages=_ask("A:" + extract.text)),
        ctx.llm(model="sim", max_tokens=50, name="analyze_b", messages=_ask("B:" + extract.text)),
    )
    summary = await ctx.llm(model="sim", max_tokens=50, name="summarize", messages=_ask(f"{a.text}|{b.text}"))
    return summary.text


@workflow
async def one_step(ctx: WorkflowContext, n: int) -> str:
    return (await ctx.llm(model="sim", max_tokens=50, name="only", messages=_ask(f"n{n}"))).text


def echo(task: executor_pb.Task) -> str:
    """Reply the way the simulator does: with the last user message."""
    return llm_message_json(json.loads(task.payload_json)["messages"][-1]["content"])


async def settled(stack: Stack) -> Any:
    """Diagnose once the replay queue is empty: every reported result has been replayed."""
    report = await stack.client.diagnose()
    return report if report.replay_queue_depth == 0 else None


async def queued_tasks(stack: Stack) -> int:
    report = await stack.client.diagnose()
    return sum(shard.queued_tasks for shard in report.shards)


async def test_older_workflows_later_steps_are_claimed_before_a_newer_workflows_first_step(
    make_stack,
) -> None:
    """Step 3 of an old workflow runs before step 0 of a newer one: the queue is ordered by
    workflow start time, not by when a task was enqueued (a plain FIFO of tasks would hand
    out the newer workflow's step 0 as soon as it was older than the next step)."""
    stack = await make_stack(registry_of(four_steps))
    older, newer = await stack.client.start_workflows(
        [("four_steps", {"topic": "old"}), ("four_steps", {"topic": "new"})]
    )
    labels = {older.workflow_id: "older", newer.workflow_id: "newer"}
    await eventually(lambda: settled(stack))
    assert await queued_tasks(stack) == 2  # both step 0s wait in the queue before any claim

    claims: list[tuple[str, int, str]] = []
    async with ManualExecutor(stack.server.address, "fifo-one-slot", capacity=1) as executor:
        await executor.connect()
        for _ in range(8):
            await executor.credit(1)
            [task] = await executor.take(1)
            claims.append((labels[task.workflow_id], task.step_number, task.name))
            assert await executor.report(executor.success(task, echo(task))) == [ACCEPTED]
            await eventually(lambda: settled(stack))  # the next steps (if any) are in the queue

    assert claims == [
        ("older", 0, "extract"),
        ("older", 1, "analyze_a"),
        ("older", 2, "analyze_b"),
        ("older", 3, "summarize"),
        ("newer", 0, "extract"),
        ("newer", 1, "analyze_a"),
        ("newer", 2, "analyze_b"),
        ("newer", 3, "summarize"),
    ]
    assert (await stack.client.wait(older.workflow_id, timeout=10)).result == "A:old|B:old"
    assert (await stack.client.wait(newer.workflow_id, timeout=10)).result == "A:new|B:new"


async def test_claims_across_several_shards_come_out_in_workflow_creation_order(make_stack) -> None:
    """One executor leasing every shard gets the globally oldest tasks first, not shard by
    shard: the per-shard queues are merged on workflow creation time."""
    stack = await make_stack(registry_of(one_step), shards=4)
    started = await stack.client.start_workflows([("one_step", {"n": n}) for n in range(16)])
    created_order = [s.workflow_id for s in started]
    shard_of = {s.workflow_id: (await stack.client.get_workflow(s.workflow_id)).shard for s in started}
    # The ids are random; this only guards that the order is not already grouped by shard,
    # which would make the test unable to tell a merge from a shard-by-shard scan.
    assert len(set(shard_of.values())) > 1
    assert sorted(created_order, key=lambda w: (shard_of[w], created_order.index(w))) != created_order
    await eventually(lambda: settled(stack))
    assert await queued_tasks(stack) == 16

    async with ManualExecutor(stack.server.address, "fifo-all-shards", capacity=16) as executor:
        await executor.connect()
        await eventually(lambda: executor.assignments and executor.assignments[-1] == [0, 1, 2, 3])
        await executor.credit(5)
        first = await executor.take(5)
        await executor.credit(11)
        rest = await executor.take(11)

    assert [task.workflow_id for task in first] == created_order[:5]
    assert [task.workflow_id for task in rest] == created_order[5:]
    assert {task.shard for task in first + rest} == set(shard_of.values())
    assert all(task.shard == shard_of[task.workflow_id] for task in first + rest)


async def test_a_pushed_batch_never_exceeds_the_free_credits_nor_fifty_tasks(make_stack) -> None:
    """Credits are the executor's flow control: the coordinator may push only as many tasks
    as slots granted, and splits large grants into batches of at most 50 (the protocol's
    max_batch_size), so an executor is never handed work it has no slot for."""
    stack = await make_stack(registry_of(one_step))
    started = await stack.client.start_workflows([("one_step", {"n": n}) for n in range(130)])
    await eventually(lambda: settled(stack))
    assert await queued_tasks(stack) == 130

    async with ManualExecutor(stack.server.address, "fifo-credits", capacity=200) as executor:
        welcome = await executor.connect(free_slots=3)
        assert welcome.max_batch_size == 50
        await executor.take(3)
        await executor.credit(7)
        await executor.take(7)
        await executor.credit(110)
        await executor.take(110)

        async def claimed_by_executor() -> int:
            report = await stack.client.diagnose()
            return sum(
                info.claimed_tasks for info in report.executors if info.executor_id == executor.executor_id
            )

        # What the coordinator leased to the executor equals what it was sent and granted.
        assert await claimed_by_executor() == 120
        assert await queued_tasks(stack) == 10
        assert len(executor.received) == 120
        # Each grant was served exactly, the grant of 110 split into batches of at most 50.
        assert [len(batch) for batch in executor.batches] == [3, 7, 50, 50, 10]
        # The grants were served oldest first, without overlap or gaps.
        assert [task.workflow_id for task in executor.received] == [s.workflow_id for s in started[:120]]


async def test_the_task_id_claim_order_runs_every_first_step_before_any_second(make_stack) -> None:
    """``claim_order=task-id`` (the benchmarks' pre-FIFO baseline) hands out the oldest *task*
    first, so a newer workflow's step 0, enqueued before the older workflow's step 1, goes
    first: the opposite of the default order in the first test of this module."""
    stack = await make_stack(registry_of(four_steps), claim_order=ClaimOrder.TASK_ID)
    older, newer = await stack.client.start_workflows(
        [("four_steps", {"topic": "old"}), ("four_steps", {"topic": "new"})]
    )
    labels = {older.workflow_id: "older", newer.workflow_id: "newer"}
    await eventually(lambda: settled(stack))

    claims: list[tuple[str, int]] = []
    async with ManualExecutor(stack.server.address, "task-id-one-slot", capacity=1) as executor:
        await executor.connect()
        for _ in range(8):
            await executor.credit(1)
            [task] = await executor.take(1)
            claims.append((labels[task.workflow_id], task.step_number))
            assert await executor.report(executor.success(task, echo(task))) == [ACCEPTED]
            await eventually(lambda: settled(stack))

    assert claims == [
        ("older", 0),
        ("newer", 0),
        ("older", 1),
        ("older", 2),
        ("newer", 1),
        ("newer", 2),
        ("older", 3),
        ("newer", 3),
    ]


async def test_an_executor_whose_shards_are_drained_takes_the_oldest_tasks_of_other_shards(
    make_stack,
) -> None:
    """Shard leases route each shard's tasks to its holder first; an executor with free slots
    and nothing left on its own shards takes the oldest tasks of the other shards rather than
    idle while they wait (unevenly hashed shards would otherwise stretch a batch's tail)."""
    stack = await make_stack(registry_of(one_step), shards=2)
    started: list[Any] = []
    shard_of: dict[str, int] = {}
    # Ids are random, so start workflows until each of the two shards has at least two.
    while min(Counter(shard_of.values()).get(shard, 0) for shard in (0, 1)) < 2:
        batch = await stack.client.start_workflows([("one_step", {"n": len(started) + n}) for n in range(6)])
        started += batch
        shard_of |= {s.workflow_id: (await stack.client.get_workflow(s.workflow_id)).shard for s in batch}
    await eventually(lambda: settled(stack))
    async with (
        ManualExecutor(stack.server.address, "fifo-owner-a", capacity=12) as a,
        ManualExecutor(stack.server.address, "fifo-owner-b", capacity=12) as b,
    ):
        await a.connect()
        await b.connect()
        await eventually(lambda: a.assignments and b.assignments and a.assignments[-1] != [0, 1])
        own = set(b.assignments[-1])
        mine = [s.workflow_id for s in started if shard_of[s.workflow_id] in own]
        others = [s.workflow_id for s in started if shard_of[s.workflow_id] not in own]
        await b.credit(len(mine) + 2)
        received = [task.workflow_id for task in await b.take(len(mine) + 2)]
        assert b.untaken() == 0 and a.untaken() == 0

    assert received == mine + others[:2]  # its own shard first, then the others' oldest
