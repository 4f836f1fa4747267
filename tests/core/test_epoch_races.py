"""Epoch bumps and registrations are serialised, and a draining executor stays draining
(and heartbeating) across reconnects.

The race is made deterministic by holding the single writer on a gate: the bump's
write is queued first and the Hello's registration behind it, so without the
serialisation the bump drains the executors it knows and the Hello then registers,
live and never drained, into the epoch that was just ended.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sqlalchemy.engine import Connection

from conveyor import WorkflowContext, task_handler, workflow
from conveyor.client.models import WorkflowStatus
from support import ManualExecutor, eventually, registry_of
from toolkit import MakeStack, handlers_of, wait_finished


@workflow
async def ask(ctx: WorkflowContext, n: int) -> str:
    return (
        await ctx.llm(model="sim", max_tokens=50, name="ask", messages=[{"role": "user", "content": f"q{n}"}])
    ).text


async def test_an_executor_registering_during_bump_epoch_is_not_left_in_the_old_epoch(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(registry_of(ask))
    coordinator = stack.coordinator
    old_epoch = coordinator.epoch
    submitted: list[str] = []
    real_write = coordinator.ctx.write

    async def recording_write(unit: Any, label: str) -> Any:
        submitted.append(label)
        return await real_write(unit, label)

    coordinator.ctx.write = recording_write  # type: ignore[method-assign]
    gate = threading.Event()

    def held(connection: Connection) -> None:
        gate.wait(60)

    writer_held = asyncio.create_task(coordinator.writer.run(held, "test gate"))
    entered: list[str] = []
    real_connect = coordinator.connect_executor

    async def recording_connect(hello: Any, peer: str) -> Any:
        entered.append(hello.executor_id)
        return await real_connect(hello, peer)

    coordinator.connect_executor = recording_connect
    try:
        bump = asyncio.create_task(coordinator.bump_epoch("deploy"))
        await eventually(lambda: "bump epoch" in submitted)
        async with ManualExecutor(stack.server.address, "racer") as racer:
            connecting = asyncio.create_task(racer.connect(free_slots=1))
            await eventually(lambda: entered == ["racer"])
            # Without serialisation the registration is now queued behind the bump (both
            # submitted synchronously on entry); with it, it waits for the bump to end.
            gate.set()
            new_epoch, _drained = await bump
            await connecting
            assert new_epoch == old_epoch + 1
            # Either welcomed into the new epoch, or told to drain: never live in the old one.
            session = coordinator.sessions.get("racer")
            assert racer.welcome is not None
            assert racer.welcome.epoch == new_epoch or racer.drains, (racer.welcome.epoch, racer.drains)
            assert session.epoch == new_epoch or session.state.value == "draining"
    finally:
        gate.set()
        await writer_held
        del coordinator.ctx.write
        del coordinator.connect_executor


STATE: dict[str, Any] = {}


@task_handler("slow")
async def slow(payload: Any) -> str:
    await STATE["release"].wait()
    return f"done {payload}"


@workflow
async def slow_step(ctx: WorkflowContext, n: int) -> Any:
    return await ctx.task("slow", n)


async def test_a_draining_executor_whose_stream_drops_reconnects_as_draining_and_finishes_its_task(
    make_stack: MakeStack,
) -> None:
    """A draining executor whose stream drops must come back (Hello.draining) and keep
    heartbeating what it still runs, or its lease expires and the task runs twice."""
    STATE["release"] = release = asyncio.Event()
    stack = await make_stack(registry_of(slow_step))
    executor = stack.start_executor(handlers=handlers_of(slow), llm=False, executor_id="drainer")
    started = await stack.client.start_workflow("slow_step", {"n": 1})
    await eventually(lambda: len(executor._running) == 1)
    executor.drain("test: shutting down")
    first = await eventually(lambda: _draining_session(stack))
    first.close_stream()  # the connection drops mid-drain
    again = await eventually(
        lambda: _draining_session(stack) not in (None, first) and _draining_session(stack)
    )
    assert again.state.value == "draining" and again.credits == 0
    release.set()
    finished = await wait_finished(stack.client, started.workflow_id, within=30)
    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    record = await stack.client.get_workflow(started.workflow_id, include_steps=True)
    assert record.steps[0].attempt == 1  # finished by the drainer, not re-run after a lost lease
    [(_executor, run)] = stack.executors
    assert await asyncio.wait_for(run, 30) == 0


def _draining_session(stack: Any) -> Any:
    session = stack.coordinator.sessions.get("drainer")
    return session if session is not None and session.state.value == "draining" else None
