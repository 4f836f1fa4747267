"""Epochs: BumpEpoch retires every running executor gracefully, and new ones take over.

Executor-side work is held on a gate (an ``asyncio.Event`` the test opens) so the moment
of the bump is deterministic: the old executor is known to hold exactly the gated tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.tasks import HandlerRegistry
from conveyor.v1 import executor_service_pb2 as executor_pb
from support import ManualExecutor, Stack, eventually, llm_message_json, registry_of

ACCEPTED = executor_pb.RESULT_DISPOSITION_ACCEPTED


@workflow
async def gated(ctx: WorkflowContext, n: int) -> str:
    ticket = await ctx.task("gate", {"n": n})
    reply = await ctx.llm(
        model="sim", max_tokens=50, name="reply", messages=[{"role": "user", "content": f"after {ticket}"}]
    )
    return reply.text


def gate() -> tuple[Callable[[Any], Awaitable[int]], asyncio.Event, list[int]]:
    """A task handler that blocks until the returned event is set; records who entered."""
    opened = asyncio.Event()
    entered: list[int] = []

    async def handler(payload: Any) -> int:
        entered.append(payload["n"])
        await opened.wait()
        return int(payload["n"])

    return handler, opened, entered


async def queue_state(stack: Stack) -> tuple[int, int, int]:
    """(queued, claimed, replay-queue depth) over all shards."""
    report = await stack.client.diagnose()
    return (
        sum(s.queued_tasks for s in report.shards),
        sum(s.claimed_tasks for s in report.shards),
        report.replay_queue_depth,
    )


async def test_after_bump_epoch_an_old_executor_drains_and_exits_zero_and_a_new_one_finishes_the_rest(
    make_stack,
) -> None:
    """A deploy: BumpEpoch makes the running executor finish and report what it holds, take
    nothing new even with a free slot and work waiting, and exit 0; an executor started
    afterwards joins the new epoch and runs everything else."""
    stack = await make_stack(registry_of(gated))
    await stack.start_simulator()
    handler, opened, entered = gate()
    handlers = HandlerRegistry({"gate": handler})
    first = await stack.client.start_workflows([("gated", {"n": n}) for n in range(3)])
    old = stack.start_executor(handlers=handlers, concurrency=4)
    old_run = stack.executors[-1][1]
    await eventually(lambda: len(entered) == 3)  # the old executor holds three tasks, one slot free

    bumped = await stack.client.bump_epoch("deploy v2")
    assert (bumped.epoch, bumped.draining_executors) == (2, 1)
    later = await stack.client.start_workflows([("gated", {"n": n}) for n in range(3, 8)])
    # The new work is queued, not sent to the old executor although it has a free slot.
    await eventually(lambda: _state_is(stack, (5, 3, 0)))

    opened.set()
    assert await asyncio.wait_for(old_run, 10) == 0
    assert old.tasks_run == 3
    assert sorted(entered) == [0, 1, 2]
    report = await stack.client.diagnose()
    assert report.epoch == 2
    assert list(report.executors) == []  # drained and left
    # 5 gates + the 3 replies the finished gates lead to, once their replays have run
    await eventually(lambda: _state_is(stack, (8, 0, 0)))

    new = stack.start_executor(handlers=handlers, concurrency=4)
    ids = [s.workflow_id for s in first + later]
    finished = [await stack.client.wait(i, timeout=15) for i in ids]
    assert [w.status for w in finished] == [WorkflowStatus.COMPLETED] * 8
    assert [w.result for w in finished] == [f"after {n}" for n in range(8)]
    runners = [
        tuple(step.executor_id for step in (await stack.client.get_workflow(i, include_steps=True)).steps)
        for i in ids
    ]
    old_id, new_id = old.config.executor_id, new.config.executor_id
    assert runners == [(old_id, new_id)] * 3 + [(new_id, new_id)] * 5
    assert [(info.executor_id, info.epoch) for info in (await stack.client.diagnose()).executors] == [
        (new_id, 2)
    ]


async def test_an_executor_saying_hello_with_an_old_epoch_is_told_to_drain_and_never_sent_tasks(
    make_stack,
) -> None:
    """An executor from before the bump that reconnects (or a stale deployment) is welcomed
    into its own epoch and immediately told to drain; it gets no shards and no tasks even
    though it offers slots and work is waiting, which a current executor then takes."""
    stack = await make_stack(registry_of(gated))
    await stack.client.bump_epoch("retire epoch 1")
    started = await stack.client.start_workflows([("gated", {"n": n}) for n in range(3)])
    await eventually(lambda: _state_is(stack, (3, 0, 0)))
    address = stack.server.address

    async with (
        ManualExecutor(address, "epoch-old", task_kinds=["gate", "llm"], capacity=5, epoch=1) as stale,
        ManualExecutor(address, "epoch-new", task_kinds=["gate", "llm"], capacity=5) as current,
    ):
        welcome = await stale.connect(free_slots=5)
        assert welcome.epoch == 1
        await eventually(lambda: len(stale.drains) == 1)
        assert stale.drains[0].epoch == 2
        assert [m.WhichOneof("message") for m in stale.messages] == ["welcome", "drain"]
        await stale.credit(5)

        assert (await current.connect()).epoch == 2
        await current.credit(3)
        gates = await current.take(3)
        assert [t.workflow_id for t in gates] == [s.workflow_id for s in started]
        assert (
            await current.report(*[current.success(t, str(n)) for n, t in enumerate(gates)]) == [ACCEPTED] * 3
        )
        await current.credit(3)
        replies = await current.take(3)
        assert (
            await current.report(*[current.success(t, llm_message_json("ok")) for t in replies])
            == [ACCEPTED] * 3
        )
        finished = [await stack.client.wait(s.workflow_id, timeout=10) for s in started]

        assert [w.result for w in finished] == ["ok"] * 3
        assert stale.received == []
        assert stale.assignments == []
        report = await stack.client.diagnose()
        views = {info.executor_id: (info.epoch, info.state, len(info.shards)) for info in report.executors}
        assert views == {"epoch-old": (1, "draining", 0), "epoch-new": (2, "live", 100)}


async def _state_is(stack: Stack, expected: tuple[int, int, int]) -> bool:
    return await queue_state(stack) == expected
