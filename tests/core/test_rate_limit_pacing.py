"""Executors pace LLM calls to the rate limits the API reports, and so are rarely refused.

Two real executors (real ``anthropic`` SDK) share a simulator limited to 1,200 requests
per minute, whose bucket starts full. The workflows need more calls than the bucket
holds, so past the first 1,200 the executors must wait for the refill: they do (their
pacers record waits), every workflow completes, and under 1% of all calls get a 429.
Counts only, no timings: how long the run takes does not matter.
"""

from __future__ import annotations

import asyncio

from bench.workflows import research
from conveyor.client.models import WorkflowStatus
from conveyor.executor.llm import LlmCaller
from conveyor.executor.pacing import RateLimitPacer
from conveyor.executor.worker import Executor, ExecutorConfig
from conveyor.tasks import HandlerRegistry
from conveyor.testing.simulator import SimulatorConfig
from support import eventually, registry_of

RPM = 1200
WORKFLOWS = 330  # 1,320 calls: 120 more than the full bucket holds


async def test_paced_executors_exceed_a_full_bucket_with_almost_no_429s(make_stack) -> None:
    stack = await make_stack(registry_of(research))
    simulator = await stack.start_simulator(SimulatorConfig(rpm=RPM, latency="uniform:0.005,0.02", seed=3))
    pacers = [RateLimitPacer(), RateLimitPacer()]
    executors = [
        Executor(
            ExecutorConfig(coordinator=stack.server.address, concurrency=20, executor_id=f"paced-{n}"),
            HandlerRegistry(),
            LlmCaller(base_url=simulator.base_url, api_key="test", timeout=10, pacer=pacer),
        )
        for n, pacer in enumerate(pacers)
    ]
    runs = [asyncio.create_task(executor.run()) for executor in executors]
    try:
        await stack.client.start_workflows([("research", {"topic": f"pacing {n}"}) for n in range(WORKFLOWS)])

        async def finished() -> bool:
            counts = await stack.client.count_workflows("research")
            return counts[WorkflowStatus.RUNNING] == 0

        await eventually(finished, timeout=120, interval=0.2)
        counts = await stack.client.count_workflows("research")
    finally:
        for executor in executors:
            executor.drain("test over")
        await asyncio.gather(*runs)

    stats = simulator.stats()
    assert counts[WorkflowStatus.COMPLETED] == WORKFLOWS
    assert stats["successes"] == 4 * WORKFLOWS > RPM  # past the full bucket: the limit was binding
    assert sum(pacer.paced_calls for pacer in pacers) > 0  # and the executors waited for its refill
    assert stats["rate_limited"] < 0.01 * stats["requests"]
