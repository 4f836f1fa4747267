"""Signals: ``ctx.wait_for_signal`` and ``SignalWorkflow``, on both databases.

A signal is durable from the moment SignalWorkflow answers: buffered when nothing waits,
delivered in the order sent, kept across coordinator restarts; a wait with a timeout
raises ``SignalTimeout`` where the workflow awaits it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from conveyor import SignalTimeout, WorkflowContext, task_handler, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.coordinator.store import signals as signal_store
from conveyor.coordinator.store.schema import signals, steps
from conveyor.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from conveyor.v1 import workflow_service_pb2 as pb
from support import eventually, registry_of
from toolkit import (
    MakeStack,
    RawStubs,
    execute,
    fetch,
    handlers_of,
    restart_coordinator,
    rpc_error,
    wait_finished,
)


@workflow
async def approval(ctx: WorkflowContext, request: str) -> dict[str, Any]:
    decision = await ctx.wait_for_signal("approval")
    return {"request": request, "decision": decision}


@workflow
async def gated_collector(ctx: WorkflowContext, count: int) -> list[Any]:
    """Waits for a handler the test releases, then takes ``count`` "item" signals."""
    await ctx.task("gate", None)
    return [await ctx.wait_for_signal("item") for _ in range(count)]


@workflow
async def patient(ctx: WorkflowContext, timeout: float) -> str:
    try:
        decision = await ctx.wait_for_signal("approval", timeout=timeout)
    except SignalTimeout as error:
        return f"timed out waiting for {error.signal_name}"
    return f"approved: {decision}"


@workflow
async def impatient(ctx: WorkflowContext) -> Any:
    return await ctx.wait_for_signal("approval", timeout=0.2)


@workflow
async def two_names(ctx: WorkflowContext) -> list[Any]:
    first = await ctx.wait_for_signal("first")
    second = await ctx.wait_for_signal("second")
    return [first, second]


WORKFLOWS = registry_of(approval, gated_collector, patient, impatient, two_names)


async def signal_steps(url: str, workflow_id: str) -> list[Any]:
    return await fetch(
        url,
        sa.select(steps)
        .where(steps.c.workflow_id == workflow_id, steps.c.kind == "signal")
        .order_by(steps.c.number),
    )


async def waiting_for_signal(url: str, workflow_id: str) -> bool:
    return any(row.status == "running" for row in await signal_steps(url, workflow_id))


async def test_a_signal_sent_to_a_waiting_workflow_is_delivered_and_explained(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("approval", {"request": "refund #7"})
    await eventually(lambda: waiting_for_signal(stack.database_url, started.workflow_id))

    explanation = await stack.client.explain_workflow(started.workflow_id)
    (step,) = explanation.steps
    assert step.wait == "signal"
    assert "waiting for signal `approval` since" in step.text

    sent = await stack.client.signal_workflow(
        started.workflow_id, "approval", {"approved": True, "by": "ana"}
    )
    finished = await wait_finished(stack.client, started.workflow_id)

    assert (sent.delivered, sent.duplicate) == (True, False)
    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == {"request": "refund #7", "decision": {"approved": True, "by": "ana"}}
    (row,) = await signal_steps(stack.database_url, started.workflow_id)
    assert (row.name, row.status, row.result) == ("approval", "completed", '{"approved":true,"by":"ana"}')


async def test_signals_sent_before_the_workflow_waits_are_buffered_and_delivered_in_order(
    make_stack: MakeStack,
) -> None:
    """Sent while the workflow is still at an earlier step: nothing waits yet, so all are buffered."""
    release = asyncio.Event()

    @task_handler("gate")
    async def gate(_payload: Any) -> None:
        await release.wait()

    stack = await make_stack(WORKFLOWS)
    stack.start_executor(handlers=handlers_of(gate), llm=False)
    started = await stack.client.start_workflow("gated_collector", {"count": 3})
    workflow_id = started.workflow_id
    sent = [await stack.client.signal_workflow(workflow_id, "item", {"n": n}) for n in (1, 2, 3)]
    extra = await stack.client.signal_workflow(workflow_id, "other", "ignored")
    release.set()
    finished = await wait_finished(stack.client, workflow_id)

    assert [s.delivered for s in sent] == [False, False, False]
    assert not extra.delivered
    assert finished.status is WorkflowStatus.COMPLETED, finished.error
    assert finished.result == [{"n": 1}, {"n": 2}, {"n": 3}]
    rows = await fetch(
        stack.database_url,
        sa.select(signals).where(signals.c.workflow_id == workflow_id).order_by(signals.c.id),
    )
    assert [(row.name, row.step_number) for row in rows] == [
        ("item", 1),
        ("item", 2),
        ("item", 3),
        ("other", None),
    ]


async def test_a_signal_of_another_name_does_not_satisfy_a_wait(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("two_names", {})
    await eventually(lambda: waiting_for_signal(stack.database_url, started.workflow_id))

    early = await stack.client.signal_workflow(started.workflow_id, "second", "B")
    first = await stack.client.signal_workflow(started.workflow_id, "first", "A")
    finished = await wait_finished(stack.client, started.workflow_id)

    assert (early.delivered, first.delivered) == (False, True)
    assert finished.result == ["A", "B"]


async def test_a_timeout_raises_signal_timeout_which_the_workflow_may_catch(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    caught = await stack.client.start_workflow("patient", {"timeout": 0.2})
    uncaught = await stack.client.start_workflow("impatient", {})

    handled = await wait_finished(stack.client, caught.workflow_id)
    failed = await wait_finished(stack.client, uncaught.workflow_id)

    assert handled.status is WorkflowStatus.COMPLETED, handled.error
    assert handled.result == "timed out waiting for approval"
    assert failed.status is WorkflowStatus.FAILED
    assert "no signal 'approval' arrived within 0.2 s" in (failed.error or "")
    (row,) = await signal_steps(stack.database_url, caught.workflow_id)
    assert row.status == "failed" and row.completed_at >= row.wake_at
    # Too late: the workflow has finished.
    with pytest.raises(FailedPrecondition, match="already finished"):
        await stack.client.signal_workflow(caught.workflow_id, "approval", True)


async def test_a_signal_within_the_timeout_wins(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("patient", {"timeout": 3600})
    await eventually(lambda: waiting_for_signal(stack.database_url, started.workflow_id))

    await stack.client.signal_workflow(started.workflow_id, "approval", "yes")
    finished = await wait_finished(stack.client, started.workflow_id)

    assert finished.result == "approved: yes"


async def test_a_wait_and_its_buffered_signal_survive_a_coordinator_restart(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    waiting = await stack.client.start_workflow("approval", {"request": "before restart"})
    collector = await stack.client.start_workflow("two_names", {})
    await eventually(lambda: waiting_for_signal(stack.database_url, waiting.workflow_id))
    await eventually(lambda: waiting_for_signal(stack.database_url, collector.workflow_id))
    buffered = await stack.client.signal_workflow(collector.workflow_id, "second", "kept")

    await stack.stop_coordinator()
    await restart_coordinator(stack)
    await stack.client.signal_workflow(waiting.workflow_id, "approval", "after restart")
    await stack.client.signal_workflow(collector.workflow_id, "first", "new")

    assert not buffered.delivered
    assert (await wait_finished(stack.client, waiting.workflow_id)).result == {
        "request": "before restart",
        "decision": "after restart",
    }
    assert (await wait_finished(stack.client, collector.workflow_id)).result == ["new", "kept"]


async def test_a_repeated_signal_with_the_same_idempotency_key_is_stored_once(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("two_names", {})

    one = await stack.client.signal_workflow(started.workflow_id, "first", 1, idempotency_key="msg-1")
    again = await stack.client.signal_workflow(started.workflow_id, "first", 1, idempotency_key="msg-1")
    await stack.client.signal_workflow(started.workflow_id, "first", 2, idempotency_key="msg-2")
    await stack.client.signal_workflow(started.workflow_id, "second", 3)
    finished = await wait_finished(stack.client, started.workflow_id)

    assert (one.duplicate, again.duplicate) == (False, True)
    # The duplicate is still recognised after the workflow finished: a retry is answered, not refused.
    late = await stack.client.signal_workflow(started.workflow_id, "first", 1, idempotency_key="msg-1")
    assert late.duplicate
    assert finished.result == [1, 3]
    rows = await fetch(
        stack.database_url, sa.select(signals).where(signals.c.workflow_id == started.workflow_id)
    )
    assert sorted(row.payload for row in rows) == ["1", "2", "3"]


async def test_bad_signals_get_clear_errors_and_store_nothing(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS, max_payload_bytes=10_000)
    started = await stack.client.start_workflow("approval", {"request": "x"})

    with pytest.raises(NotFound):
        await stack.client.signal_workflow("no-such-workflow", "approval")
    async with RawStubs(stack.server.address) as stubs:
        for request, expected in [
            (pb.SignalWorkflowRequest(workflow_id=started.workflow_id, name=""), "signal name"),
            (pb.SignalWorkflowRequest(workflow_id=started.workflow_id, name="a\nb"), "signal name"),
            (pb.SignalWorkflowRequest(workflow_id=started.workflow_id, name="x" * 201), "signal name"),
            (
                pb.SignalWorkflowRequest(workflow_id=started.workflow_id, name="ok", payload_json="{nope"),
                "not valid JSON",
            ),
            (
                pb.SignalWorkflowRequest(
                    workflow_id=started.workflow_id, name="ok", payload_json='"\\ud800"'
                ),
                "surrogate",
            ),
            (
                pb.SignalWorkflowRequest(workflow_id=started.workflow_id, name="ok", payload_json="1" * 5000),
                "JSON cannot carry",
            ),
            (
                pb.SignalWorkflowRequest(workflow_id=started.workflow_id, name="ok", payload_json="NaN"),
                "not a JSON number",
            ),
            (pb.SignalWorkflowRequest(workflow_id="", name="ok"), "workflow_id is required"),
        ]:
            error = await rpc_error(stubs.workflows.SignalWorkflow(request))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (request, error.details())
            assert expected in (error.details() or ""), (request, error.details())
    with pytest.raises(InvalidArgument, match="limit is"):
        await stack.client.signal_workflow(started.workflow_id, "big", "x" * 10_000)
    rows = await fetch(stack.database_url, sa.select(signals))
    assert rows == []
    await stack.client.signal_workflow(started.workflow_id, "approval", "still fine")
    assert (await wait_finished(stack.client, started.workflow_id)).result["decision"] == "still fine"


async def test_a_workflow_that_never_waits_cannot_be_flooded(
    make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signal_store, "MAX_BUFFERED_SIGNALS", 3)
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("approval", {"request": "x"})
    for n in range(3):
        await stack.client.signal_workflow(started.workflow_id, "noise", n)

    with pytest.raises(ResourceExhausted, match="3 signals it has not waited for"):
        await stack.client.signal_workflow(started.workflow_id, "noise", 99)
    # The one it waits for still gets through: it is delivered, so it does not grow the buffer.
    await eventually(lambda: waiting_for_signal(stack.database_url, started.workflow_id))
    sent = await stack.client.signal_workflow(started.workflow_id, "approval", "yes")
    assert sent.delivered
    assert (await wait_finished(stack.client, started.workflow_id)).result["decision"] == "yes"


async def test_diagnose_reports_a_wait_whose_signal_sits_in_the_buffer(make_stack: MakeStack) -> None:
    """The delivery invariant, broken by hand: a buffered signal a waiting step should have taken."""
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("approval", {"request": "x"})
    await eventually(lambda: waiting_for_signal(stack.database_url, started.workflow_id))
    assert not (await stack.client.diagnose()).violations

    await execute(
        stack.database_url,
        sa.insert(signals).values(workflow_id=started.workflow_id, name="approval", payload="1", sent_at=0),
    )
    report = await stack.client.diagnose()

    assert [(v.kind, list(v.workflow_ids)) for v in report.violations] == [
        ("signal_not_delivered", [started.workflow_id])
    ]


async def test_explain_reports_the_signals_buffered_and_not_waited_for(make_stack: MakeStack) -> None:
    stack = await make_stack(WORKFLOWS)
    started = await stack.client.start_workflow("two_names", {})
    for name in ("second", "later", "second"):
        await stack.client.signal_workflow(started.workflow_id, name, None)

    explained = await stack.client.explain_workflow(started.workflow_id)

    assert "3 signals buffered (sent, not waited for yet): second x2, later." in explained.summary
    await stack.client.signal_workflow(started.workflow_id, "first", 1)
    await wait_finished(stack.client, started.workflow_id)
    assert "buffered" not in (await stack.client.explain_workflow(started.workflow_id)).summary
