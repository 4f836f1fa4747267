"""The drain timeout bounds a graceful shutdown, running LLM calls included.

A real executor process, a real simulator whose answers take ten minutes: SIGTERM
starts a drain; when ``--drain-timeout`` passes the executor cancels the call (the
simulator sees the client go away) and exits 1, instead of waiting for the answer.
The workflow's task is then the lease's to retry, and nothing is stranded.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from bench.chaos.cluster import ChaosCluster, ChaosSettings
from bench.chaos.workload import Workload

pytestmark = pytest.mark.slow


async def test_the_drain_timeout_cancels_a_running_llm_call(chaos_settings: ChaosSettings) -> None:
    settings = replace(chaos_settings, executors=0, latency="fixed:600", llm_timeout=900.0)
    with ChaosCluster(settings) as chaos:
        executor_id = "drain-timeout"
        chaos.executors[executor_id] = chaos.cluster.add_executor(
            extra_args=["--executor-id", executor_id, "--drain-timeout", "5"]
        )
        async with chaos.client() as client:
            await Workload(1, "one call").start(client)
            deadline = asyncio.get_running_loop().time() + 120
            while chaos.simulator_stats()["in_flight"] < 1:  # the call is running at the API
                assert asyncio.get_running_loop().time() < deadline, "the LLM call never started"
                await asyncio.sleep(0.1)
            # Far below the call's 600 s: only cancelling it lets the executor exit in time.
            code = await chaos.stop_executor(executor_id, within=120)
        stats = chaos.simulator_stats()

    assert code == 1, "the executor did not exit after its drain timeout (or exited as if drained)"
    assert stats["client_disconnects"] >= 1, stats  # the SDK request itself was cancelled
