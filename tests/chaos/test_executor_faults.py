"""Executors killed, frozen, drained and retired while hundreds of workflows run.

Every scenario ends with the system-wide invariant check (:mod:`bench.chaos.invariants`):
every workflow finished, none stranded, each step's result recorded once, results
correct, duplicate LLM calls no more than the tasks in flight when the faults hit.
"""

from __future__ import annotations

import pytest

from bench.chaos.cluster import ChaosCluster, ChaosSettings
from bench.chaos.workload import Workload

pytestmark = pytest.mark.slow

#: How long a graceful stop (SIGTERM, or a drain after BumpEpoch) may take.
DRAIN_BOUND = 30.0


async def test_executors_killed_at_random_mid_task_lose_nothing(chaos_settings: ChaosSettings) -> None:
    workload = Workload(600, "kills")
    with ChaosCluster(chaos_settings) as chaos:
        async with chaos.client() as client:
            await workload.start(client)
            for finished in (50, 150, 250, 350):
                await workload.wait_until_finished(client, finished, timeout=120)
                await chaos.kill_executor()
            await workload.wait_until_finished(client, timeout=180)
        report = chaos.check()

    assert report.ok, report.render()
    assert report.by_status == {"completed": 600}
    assert all(fault.in_flight > 0 for fault in report.faults), "every kill hit an executor mid-task"


async def test_an_executor_frozen_past_its_lease_has_its_late_results_fenced_off(
    chaos_settings: ChaosSettings,
) -> None:
    workload = Workload(300, "frozen")
    with ChaosCluster(chaos_settings) as chaos:
        async with chaos.client() as client:
            await workload.start(client)
            await workload.wait_until_finished(client, 30, timeout=120)
            frozen = await chaos.busy_executor()
            held = await chaos.pause_executor_past_lease(frozen)
            await workload.wait_until_finished(client, timeout=180)
            rejected = (await client.diagnose()).rejected_stale_results
        accepted = await chaos.accepted_tokens(held)
        report = chaos.check()

    assert report.ok, report.render()
    assert report.by_status == {"completed": 300}
    assert held, "the coordinator took tasks back from the frozen executor"
    # Woken up, it reported what it held, with the tokens of a lease that had expired:
    # rejected, and each of those steps was completed by the result of a later claim (tokens
    # are random per claim, so "later" shows as "another").
    assert rejected >= 1
    assert {task: accepted[task] is not None and accepted[task] != token for task, token in held.items()} == {
        task: True for task in held
    }


async def test_bump_epoch_and_sigterm_during_load_drain_cleanly_and_lose_nothing(
    chaos_settings: ChaosSettings,
) -> None:
    workload = Workload(600, "drain")
    with ChaosCluster(chaos_settings) as chaos:
        async with chaos.client() as client:
            await workload.start(client)
            await workload.wait_until_finished(client, 100, timeout=120)
            retired = await chaos.bump_epoch(client)
            for _ in retired:
                chaos.add_executor()
            drain_codes = [await chaos.wait_exit(name, within=DRAIN_BOUND) for name in retired]
            await workload.wait_until_finished(client, 350, timeout=120)
            stopped = chaos.live_executors()[0]
            sigterm_code = await chaos.stop_executor(stopped, within=DRAIN_BOUND)
            await workload.wait_until_finished(client, timeout=180)
        report = chaos.check()

    assert report.ok, report.render()
    assert report.by_status == {"completed": 600}
    assert drain_codes == [0] * len(retired), f"after BumpEpoch, within {DRAIN_BOUND}s"
    assert sigterm_code == 0, f"after SIGTERM, within {DRAIN_BOUND}s"
    # A drained executor finishes and reports everything it holds: nothing runs twice.
    assert report.duplicate_llm_calls == 0
