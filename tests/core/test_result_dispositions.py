"""Per-result dispositions: one malformed result in a RecordResults batch is refused
alone, with its reason, while the batch's good results are applied; and the real
executor turns a refused result into a failure rather than re-sending it forever."""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor import RetryPolicy, WorkflowContext, task_handler, workflow
from conveyor.client.models import WorkflowStatus
from conveyor.v1 import executor_service_pb2 as executor_pb
from support import ManualExecutor, eventually, llm_message_json, registry_of
from toolkit import MakeStack, handlers_of, wait_finished

ACCEPTED = executor_pb.RESULT_DISPOSITION_ACCEPTED
REFUSED = executor_pb.RESULT_DISPOSITION_REFUSED


@workflow
async def ask(ctx: WorkflowContext, n: int) -> str:
    return (
        await ctx.llm(model="sim", max_tokens=50, name="ask", messages=[{"role": "user", "content": f"q{n}"}])
    ).text


async def test_a_malformed_result_is_refused_alone_and_the_rest_applied(make_stack: MakeStack) -> None:
    stack = await make_stack(registry_of(ask))
    started = await stack.client.start_workflows([("ask", {"n": n}) for n in range(3)])
    ids = [s.workflow_id for s in started]

    async with ManualExecutor(stack.server.address, "dispositions", capacity=3) as manual:
        await manual.connect(free_slots=3)
        first, second, third = await manual.take(3)
        no_class = executor_pb.TaskResult(
            task_id=second.task_id,
            fencing_token=second.fencing_token,
            failure=executor_pb.TaskFailure(message="boom"),
        )
        no_outcome = executor_pb.TaskResult(task_id=third.task_id, fencing_token=third.fencing_token)
        response = await manual.stub.RecordResults(
            executor_pb.RecordResultsRequest(
                executor_id="dispositions",
                results=[no_class, manual.success(first, llm_message_json("good")), no_outcome],
            )
        )
        assert list(response.dispositions) == [REFUSED, ACCEPTED, REFUSED]
        assert "results[0].failure.error_class is not set" in response.reasons[0]
        assert response.reasons[1] == ""
        assert "results[2] has neither result_json nor failure" in response.reasons[2]

        by_task = {first.task_id: 0, second.task_id: 1, third.task_id: 2}
        done = await stack.client.wait(ids[by_task[first.task_id]], timeout=20)
        assert done.status is WorkflowStatus.COMPLETED and done.result == "good"
        # The refused ones changed nothing: their tasks are still this executor's to report.
        results = [manual.success(t, llm_message_json(f"later {t.task_id}")) for t in (second, third)]
        assert await manual.report(*results) == [ACCEPTED, ACCEPTED]
    for task in (second, third):
        finished = await stack.client.wait(ids[by_task[task.task_id]], timeout=20)
        assert finished.result == f"later {task.task_id}"


BIG = 12_000  # each result fits max_payload_bytes; ten of them do not fit one message
#: The current test's gate (an Event belongs to one event loop, and each test has its own).
GATE: dict[str, asyncio.Event] = {}


@task_handler("big")
async def big(payload: Any) -> str:
    await GATE["release"].wait()
    return "x" * BIG


@workflow
async def big_result(ctx: WorkflowContext, n: int) -> Any:
    return await ctx.task("big", n, retry=RetryPolicy(max_attempts=1))


async def test_a_batch_the_coordinator_refuses_does_not_stop_the_executors_reports(
    make_stack: MakeStack,
) -> None:
    """Results that each fit but together exceed the coordinator's message limit: the batch
    is refused (RESOURCE_EXHAUSTED). The executor must not re-send it forever at the head of
    its queue: it sends them apart, and every workflow completes."""
    GATE["release"] = release = asyncio.Event()
    stack = await make_stack(
        registry_of(big_result), max_message_bytes=64 * 1024, max_payload_bytes=16 * 1024
    )
    executor = stack.start_executor(handlers=handlers_of(big), llm=False, concurrency=10)
    started = await stack.client.start_workflows([("big_result", {"n": n}) for n in range(10)])
    await eventually(lambda: len(executor._running) == 10, timeout=30)
    release.set()
    for one in started:
        finished = await wait_finished(stack.client, one.workflow_id, within=60)
        assert finished.status is WorkflowStatus.COMPLETED, finished.error
        assert finished.result == "x" * BIG
