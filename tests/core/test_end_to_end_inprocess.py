"""The whole path in one process: start → replay → claim → LLM call → record → replay → done."""

from __future__ import annotations

import asyncio

from conveyor import WorkflowContext, workflow
from conveyor.client.models import WorkflowStatus
from support import registry_of


@workflow
async def research(ctx: WorkflowContext, topic: str) -> str:
    extract = await ctx.llm(
        model="sim",
        max_tokens=100,
        name="extract",
        messages=[{"role": "user", "content": f"claims about {topic}"}],
    )
    a, b = await asyncio.gather(
        ctx.llm(
            model="sim",
            max_tokens=100,
            name="analyze_a",
            messages=[{"role": "user", "content": "A:" + extract.text}],
        ),
        ctx.llm(
            model="sim",
            max_tokens=100,
            name="analyze_b",
            messages=[{"role": "user", "content": "B:" + extract.text}],
        ),
    )
    summary = await ctx.llm(
        model="sim",
        max_tokens=100,
        name="summarize",
        messages=[{"role": "user", "content": f"{a.text}|{b.text}"}],
    )
    return summary.text


async def test_workflows_complete_with_results_built_from_each_step(make_stack) -> None:
    stack = await make_stack(registry_of(research))
    await stack.start_simulator()
    stack.start_executor(concurrency=20)
    started = await stack.client.start_workflows([("research", {"topic": f"t{i}"}) for i in range(30)])

    finished = [await stack.client.wait(s.workflow_id, timeout=30) for s in started]

    assert [w.status for w in finished] == [WorkflowStatus.COMPLETED] * 30
    assert [w.result for w in finished] == [f"A:claims about t{i}|B:claims about t{i}" for i in range(30)]
    detail = await stack.client.get_workflow(started[0].workflow_id, include_steps=True)
    assert [(s.number, s.name, s.status) for s in detail.steps] == [
        (0, "extract", "completed"),
        (1, "analyze_a", "completed"),
        (2, "analyze_b", "completed"),
        (3, "summarize", "completed"),
    ]
    report = await stack.client.diagnose()
    assert list(report.violations) == []
    assert dict(report.workflows_by_status) == {"completed": 30}
    assert stack.simulator.stats()["successes"] == 120
    assert stack.simulator.stats()["duplicate_successes"] == 0
