"""The durable replay queue: its invariant holds at every commit, and it carries workflows
across a coordinator crash.

Invariant (checked by Diagnose): a running workflow with no step in progress has a
replay-queue row, so nothing is ever left with no one to resume it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.clock import now_us
from conveyor.coordinator.store import Database, Disposition, ReportedResult, TaskQueue
from conveyor.coordinator.store.schema import replay_queue, steps, tasks
from conveyor.tasks import HandlerRegistry
from support import ManualExecutor, eventually, llm_message_json, registry_of


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@workflow
async def small(ctx: WorkflowContext, n: int) -> str:
    """One step, a durable timer, then two steps in parallel: every kind of transaction."""
    first = await ctx.llm(model="sim", max_tokens=20, name="first", messages=_ask(f"w{n}"))
    await ctx.sleep(0)
    a, b = await asyncio.gather(
        ctx.llm(model="sim", max_tokens=20, name="a", messages=_ask("a" + first.text)),
        ctx.llm(model="sim", max_tokens=20, name="b", messages=_ask("b" + first.text)),
    )
    return a.text + b.text


@workflow
async def two_steps(ctx: WorkflowContext, topic: str) -> str:
    first = await ctx.llm(model="sim", max_tokens=50, name="first", messages=_ask(topic))
    second = await ctx.llm(model="sim", max_tokens=50, name="second", messages=_ask("then " + first.text))
    return f"{first.text} / {second.text}"


@workflow
async def gated(ctx: WorkflowContext, n: int) -> str:
    ticket = await ctx.task("gate", {"n": n})
    return (await ctx.llm(model="sim", max_tokens=20, name="reply", messages=_ask(f"after {ticket}"))).text


async def test_the_replay_queue_invariant_holds_at_every_check_while_hundreds_of_workflows_run(
    make_stack,
) -> None:
    """Diagnose reads one committed state per check; since every transaction (start, record,
    replay, timers) must keep the invariant, no check taken while work is in flight may find
    a violation: a stranded workflow, a step without its task, or a leftover task."""
    count = 300
    stack = await make_stack(registry_of(small))
    await stack.start_simulator()
    stack.start_executor(concurrency=50)
    started = await stack.client.start_workflows([("small", {"n": n}) for n in range(count)])

    checks_while_running = 0
    async with asyncio.timeout(60):
        while True:
            report = await stack.client.diagnose()
            assert [(v.kind, v.count, list(v.workflow_ids)) for v in report.violations] == []
            if report.workflows_by_status.get("running", 0) == 0:
                break
            checks_while_running += 1

    assert checks_while_running >= 3  # the checks really overlapped the run
    report = await stack.client.diagnose()  # the end state: everything finished, nothing left behind
    assert list(report.violations) == []
    assert dict(report.workflows_by_status) == {"completed": count}
    assert report.replay_queue_depth == 0
    assert sum(s.queued_tasks + s.claimed_tasks + s.delayed_tasks for s in report.shards) == 0
    sample = await stack.client.get_workflow(started[-1].workflow_id)
    assert sample.result == f"aw{count - 1}bw{count - 1}"


async def test_a_coordinator_killed_between_recording_a_result_and_replaying_resumes_the_workflow(
    make_stack,
) -> None:
    """Recording results (transaction 2) and replaying (transaction 3) are separate commits;
    a crash between them leaves only a replay-queue row. The next coordinator must pick that
    row up, replay with the recorded result, and finish the workflow with it, without
    running the recorded step again."""
    stack = await make_stack(registry_of(two_steps))
    [started] = await stack.client.start_workflows([("two_steps", {"topic": "tides"})])
    async with ManualExecutor(stack.server.address, "crash-witness") as executor:
        await executor.connect(free_slots=1)
        [task] = await executor.take(1)
    port = stack.server.port
    await stack.stop_coordinator()

    # Transaction 2 exactly as RecordResults applies it, then the "crash": no replay runs.
    database = Database(stack.database_url)
    try:
        with database.writer.begin() as connection:
            outcome = TaskQueue(database.dialect).record(
                connection,
                executor_id="crash-witness",
                results=[ReportedResult(task.task_id, task.fencing_token, llm_message_json("recorded"))],
                now=now_us(),
            )
        assert (outcome.dispositions, outcome.replays_enqueued) == ([Disposition.ACCEPTED], 1)
        with database.reader.connect() as connection:
            assert list(connection.execute(select(replay_queue.c.workflow_id)).scalars()) == [
                started.workflow_id
            ]
            assert list(connection.execute(select(tasks.c.id)).scalars()) == []
            journal = connection.execute(
                select(steps.c.number, steps.c.status).order_by(steps.c.number)
            ).all()
            assert [tuple(row) for row in journal] == [(0, "completed")]
    finally:
        database.dispose()

    await stack.start_coordinator(port=port)
    simulator = await stack.start_simulator()
    stack.start_executor(concurrency=2)
    finished = await stack.client.wait(started.workflow_id, timeout=15)
    assert (finished.status, finished.result) == (WorkflowStatus.COMPLETED, "recorded / then recorded")
    assert simulator.stats()["successes"] == 1  # only the second step ran after the restart
    report = await stack.client.diagnose()
    assert list(report.violations) == []
    assert report.replay_queue_depth == 0


async def test_a_restarted_coordinator_lets_an_executor_reconnect_and_report_the_tasks_it_held(
    make_stack,
) -> None:
    """The coordinator's in-memory sessions die with it, but the leases are in the database:
    an executor still running tasks reconnects (with backoff) to the new coordinator, lists
    them as held, and reports them; they are accepted, not re-run and not retried."""
    stack = await make_stack(registry_of(gated))
    await stack.start_simulator()
    opened = asyncio.Event()
    entered: list[int] = []

    async def gate(payload: Any) -> int:
        entered.append(payload["n"])
        await opened.wait()
        return int(payload["n"])

    started = await stack.client.start_workflows([("gated", {"n": n}) for n in range(3)])
    executor = stack.start_executor(
        handlers=HandlerRegistry({"gate": gate}), concurrency=4, reconnect_max_delay=0.5
    )
    await eventually(lambda: len(entered) == 3)
    port = stack.server.port
    await stack.stop_coordinator()

    opened.set()  # the tasks finish while no coordinator is there to hear about it
    await eventually(lambda: executor.tasks_run == 3)
    await stack.start_coordinator(port=port)

    finished = [await stack.client.wait(s.workflow_id, timeout=15) for s in started]
    assert [(w.status, w.result) for w in finished] == [
        (WorkflowStatus.COMPLETED, f"after {n}") for n in range(3)
    ]
    gates = [(await stack.client.get_workflow(s.workflow_id, include_steps=True)).steps[0] for s in started]
    assert [(g.attempt, g.executor_id, g.result) for g in gates] == [
        (1, executor.config.executor_id, n) for n in range(3)
    ]
    assert sorted(entered) == [0, 1, 2]  # no gate task ran twice
    report = await stack.client.diagnose()
    assert report.rejected_stale_results == 0
    assert [(i.executor_id, i.state) for i in report.executors] == [(executor.config.executor_id, "live")]
    assert list(report.violations) == []
