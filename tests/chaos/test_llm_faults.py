"""The LLM API misbehaving: bursts of 429 with retry-after, 529 storms, 500s, hung
connections and truncated answers.

Each burst lasts until the simulator has served a few answers of its kind, then the
API recovers, so every step gets through on a later attempt. None of these answers
is a success, so no LLM call may be made twice.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from bench.chaos.cluster import ChaosCluster, ChaosSettings
from bench.chaos.workload import Workload

pytestmark = pytest.mark.slow

#: (finished workflows that trigger it, what, simulator settings during it and after,
#: the simulator counter that shows it was served, how many to serve)
BURSTS: list[tuple[int, str, dict[str, Any], dict[str, Any], str, int]] = [
    # A lowered limit: the executors' pacers slow down from the headers, so only a few 429s.
    (50, "rate limit: 429 with retry-after", {"rpm": 60}, {"rpm": 0}, "rate_limited", 1),
    (150, "529 storm", {"error_529": 0.5}, {"error_529": 0.0}, "overloaded", 20),
    (250, "500s", {"error_500": 0.3}, {"error_500": 0.0}, "server_errors", 10),
    (350, "hung connections", {"hang": 0.1}, {"hang": 0.0}, "hangs", 5),
    (450, "truncated answers", {"truncate": 0.3}, {"truncate": 0.0}, "truncations", 5),
]


async def test_llm_api_faults_are_retried_until_every_workflow_completes(
    chaos_settings: ChaosSettings,
) -> None:
    workload = Workload(600, "llm")
    # Hung connections hold a slot until the attempt times out: keep that short.
    with ChaosCluster(replace(chaos_settings, llm_timeout=2.0)) as chaos:
        async with chaos.client() as client:
            await workload.start(client)
            for finished, description, during, after, counter, served in BURSTS:
                await workload.wait_until_finished(client, finished, timeout=120)
                chaos.configure_simulator(description, **during)
                await chaos.until_simulator_served(counter, served)
                chaos.configure_simulator(f"end of {description}", **after)
            await workload.wait_until_finished(client, timeout=180)
        report = chaos.check()

    assert report.ok, report.render()
    assert report.by_status == {"completed": 600}
    assert report.duplicate_llm_calls == 0
