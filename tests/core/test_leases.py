"""Shard leases: silent executors lose their work, shards follow the live executors, and a
brief disconnection costs nothing.

The lease TTL is the stack's default 2 s (heartbeats every 0.2 s); every wait polls for the
observable outcome rather than sleeping for the TTL.
"""

from __future__ import annotations

from typing import Any

from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.v1 import executor_service_pb2 as executor_pb
from support import ManualExecutor, Stack, eventually, llm_message_json, registry_of

ACCEPTED = executor_pb.RESULT_DISPOSITION_ACCEPTED
STALE = executor_pb.RESULT_DISPOSITION_STALE


@workflow
async def ask(ctx: WorkflowContext, n: int) -> str:
    return (
        await ctx.llm(model="sim", max_tokens=50, name="ask", messages=[{"role": "user", "content": f"q{n}"}])
    ).text


async def diagnose(stack: Stack) -> Any:
    return await stack.client.diagnose()


async def shard_holders(stack: Stack) -> dict[str, list[int]]:
    """Diagnose's view: executor id → shards it leases (executors without shards included)."""
    return {info.executor_id: list(info.shards) for info in (await diagnose(stack)).executors}


def assert_even_partition(holders: dict[str, list[int]], members: list[str], shard_count: int) -> None:
    assert sorted(holders) == sorted(members)
    counts = [len(holders[m]) for m in members]
    assert max(counts) - min(counts) <= 1, holders
    every = sorted(shard for m in members for shard in holders[m])
    assert every == list(range(shard_count)), holders  # each shard exactly once


async def test_a_silent_executor_loses_its_shards_and_its_tasks_run_elsewhere_first_in_line(
    make_stack,
) -> None:
    """A hung executor (stream open, no heartbeats) must not strand work: after the lease TTL
    its shards go to the live executor, and the tasks it held go back to the queue at their
    original FIFO position, ahead of newer work, spending one attempt each."""
    stack = await make_stack(registry_of(ask))
    simulator = await stack.start_simulator()
    started = await stack.client.start_workflows([("ask", {"n": n}) for n in range(6)])
    ids = [s.workflow_id for s in started]
    await eventually(lambda: _queued(stack, 6))

    async with ManualExecutor(stack.server.address, "lease-hung", capacity=2) as hung:
        await hung.connect(free_slots=2)
        held = await hung.take(2)
        assert [task.workflow_id for task in held] == ids[:2]
        assert hung.assignments[-1] == list(range(100))
        await hung.go_silent()
        await eventually(lambda: hung.stream_ended.is_set())  # the coordinator ended the lease
        await eventually(lambda: _unclaimed(stack, 6))  # nothing lost, nothing left claimed...
        report = await diagnose(stack)
        assert sum(shard.queued_tasks for shard in report.shards) == 6  # ...and claimable at once
        assert list(report.executors) == []

        real = stack.start_executor(concurrency=1)
        await eventually(lambda: _all_finished(stack, ids))
        assert await shard_holders(stack) == {real.config.executor_id: list(range(100))}

        workflows = [await stack.client.get_workflow(i, include_steps=True) for i in ids]
        assert [w.status for w in workflows] == [WorkflowStatus.COMPLETED] * 6
        assert [w.result for w in workflows] == [f"q{n}" for n in range(6)]
        steps = [w.steps[0] for w in workflows]
        assert [s.attempt for s in steps] == [2, 2, 1, 1, 1, 1]
        assert {s.executor_id for s in steps} == {real.config.executor_id}
        # One slot: the real executor ran them one at a time, in FIFO order, the returned tasks first.
        assert [s.started_at for s in steps] == sorted(s.started_at for s in steps)
        assert simulator.stats()["successes"] == 6

        # The hung executor wakes up and reports: too late, nothing changes.
        late = [hung.success(task, llm_message_json("late")) for task in held]
        assert await hung.report(*late) == [STALE, STALE]
    assert [(await stack.client.get_workflow(i)).result for i in ids[:2]] == ["q0", "q1"]


async def test_shards_are_rebalanced_evenly_when_executors_join_and_leave(make_stack) -> None:
    """Every shard is leased by exactly one live executor, and the shares differ by at most
    one, as executors come and go; each executor is told its current shard set."""
    stack = await make_stack(registry_of(ask), shards=10)
    address = stack.server.address
    async with (
        ManualExecutor(address, "balance-a") as a,
        ManualExecutor(address, "balance-b") as b,
        ManualExecutor(address, "balance-c") as c,
    ):
        await a.connect()
        assert await shard_holders(stack) == {"balance-a": list(range(10))}
        await eventually(lambda: a.assignments and a.assignments[-1] == list(range(10)))

        await b.connect()
        holders = await eventually(lambda: _holders_when(stack, lambda h: len(h.get("balance-b", [])) == 5))
        assert_even_partition(holders, ["balance-a", "balance-b"], 10)

        await c.connect()
        holders = await eventually(lambda: _holders_when(stack, lambda h: len(h.get("balance-c", [])) == 3))
        assert_even_partition(holders, ["balance-a", "balance-b", "balance-c"], 10)
        for member in (a, b, c):
            await eventually(lambda m=member: m.assignments and m.assignments[-1] == holders[m.executor_id])

        await b.leave()  # a clean exit: its shards move at once
        holders = await eventually(lambda: _holders_when(stack, lambda h: "balance-b" not in h))
        assert_even_partition(holders, ["balance-a", "balance-c"], 10)
        assert sorted(len(v) for v in holders.values()) == [5, 5]

        await c.go_silent()  # a hung one: its shards move when its lease expires
        holders = await eventually(lambda: _holders_when(stack, lambda h: "balance-c" not in h))
        assert holders == {"balance-a": list(range(10))}
        await eventually(lambda: a.assignments[-1] == list(range(10)))


async def test_an_executor_that_reconnects_within_the_ttl_keeps_the_tasks_it_holds(make_stack) -> None:
    """A dropped connection is not a lost executor: reconnecting with the same id within the
    TTL, it keeps the tasks it lists in Hello.held_task_ids (and can report them with their
    original tokens), while tasks it was sent but does not list, which never arrived, go
    straight back to the queue without spending an attempt."""
    stack = await make_stack(registry_of(ask))
    started = await stack.client.start_workflows([("ask", {"n": n}) for n in range(3)])
    ids = [s.workflow_id for s in started]
    await eventually(lambda: _queued(stack, 3))
    address = stack.server.address

    async with ManualExecutor(address, "lease-flaky", capacity=3) as first_connection:
        await first_connection.connect(free_slots=3)
        sent = await first_connection.take(3)
        await first_connection.disconnect()
    kept, lost = sent[:2], sent[2]

    # The same process reconnecting: it says so with the epoch it was welcomed into (a new
    # process sends 0, and then the unlisted task, which it may have died running, costs an
    # attempt: tests/chaos/test_poison_tasks.py).
    epoch = first_connection.welcome.epoch
    async with ManualExecutor(address, "lease-flaky", capacity=3, epoch=epoch) as again:
        await again.connect(held_task_ids=[task.task_id for task in kept])
        report = await diagnose(stack)
        assert [(i.executor_id, i.state, i.claimed_tasks) for i in report.executors] == [
            ("lease-flaky", "live", 2)
        ]
        assert sum(shard.queued_tasks for shard in report.shards) == 1

        results = [again.success(t, llm_message_json(f"kept {t.task_id}")) for t in kept]
        assert await again.report(*results) == [ACCEPTED, ACCEPTED]  # the original tokens still hold
        await again.credit(1)
        [resent] = await again.take(1)
        assert resent.task_id == lost.task_id
        assert resent.attempt == lost.attempt == 1  # never ran, so no attempt was spent
        assert resent.fencing_token != lost.fencing_token  # a new claim, a new (random) token
        stale = again.success(lost, llm_message_json("old token"))
        assert await again.report(stale) == [STALE]
        assert await again.report(again.success(resent, llm_message_json("resent"))) == [ACCEPTED]

    finished = [await stack.client.wait(i, timeout=10) for i in ids]
    assert [w.result for w in finished] == [f"kept {kept[0].task_id}", f"kept {kept[1].task_id}", "resent"]
    steps = [(await stack.client.get_workflow(i, include_steps=True)).steps[0] for i in ids]
    assert [s.attempt for s in steps] == [1, 1, 1]
    assert (await diagnose(stack)).rejected_stale_results == 1


async def _queued(stack: Stack, count: int) -> bool:
    report = await diagnose(stack)
    return report.replay_queue_depth == 0 and sum(shard.queued_tasks for shard in report.shards) == count


async def _unclaimed(stack: Stack, count: int) -> bool:
    """No task is claimed and ``count`` wait in the queue, claimable now or after a delay."""
    shards = (await diagnose(stack)).shards
    return (
        sum(s.claimed_tasks for s in shards) == 0
        and sum(s.queued_tasks + s.delayed_tasks for s in shards) == count
    )


async def _all_finished(stack: Stack, ids: list[str]) -> bool:
    statuses = [(await stack.client.get_workflow(i)).status for i in ids]
    return all(status.finished for status in statuses)


async def _holders_when(stack: Stack, condition: Any) -> dict[str, list[int]] | None:
    holders = await shard_holders(stack)
    return holders if condition(holders) else None
