"""An executor process frozen (SIGSTOP) past its lease while it runs tasks, then woken (SIGCONT).

The only executor: the tasks the coordinator takes back when its lease expires have
nobody else to go to, so when the woken process reconnects they are claimed again *for
the same executor*, with new tokens, while it may still be running them under the old
ones. Issue 9 (item 4) found that this stranded them: the executor ignored the re-claim
as "already running", reported the old token (rejected as stale), and the task stayed
claimed by a live executor for ever. Here every workflow must still complete, with each
step's result recorded once and no task left claimed by nobody live.

The calls it runs when frozen take far longer than the freeze, so they are still running
when it reconnects and the re-claims reach it: the order in which the bug bites.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from bench.chaos.cluster import ChaosCluster, ChaosSettings
from bench.chaos.workload import Workload

pytestmark = pytest.mark.slow

#: Far longer than the freeze (the lease TTL, 3 s, and the time to notice it).
CALL_SECONDS = 20.0
WORKFLOWS = 20


async def test_the_only_executor_frozen_past_its_lease_gets_its_tasks_back_and_finishes_them(
    chaos_settings: ChaosSettings,
) -> None:
    settings = replace(
        chaos_settings,
        executors=1,
        # Free slots when it reconnects: the re-claims reach it while the old attempts run.
        concurrency=WORKFLOWS * 2,
        latency=f"fixed:{CALL_SECONDS}",
        llm_timeout=CALL_SECONDS * 4,
    )
    workload = Workload(WORKFLOWS, "reclaimed by its holder")
    with ChaosCluster(settings) as chaos:
        [frozen] = chaos.live_executors()
        async with chaos.client() as client:
            await workload.start(client)
            deadline = time.monotonic() + 120
            while chaos.simulator_stats()["in_flight"] < WORKFLOWS:  # every first call is running
                assert time.monotonic() < deadline, "the executor never ran every first call"
                await asyncio.sleep(0.1)
            held = await chaos.pause_executor_past_lease(frozen)
            # Calls started from now on are quick: the rest of the run takes seconds.
            chaos.configure_simulator("fast calls after the freeze", latency="uniform:0.02,0.08")
            # Nobody else serves the queue: only the woken executor can finish what it held.
            await workload.wait_until_finished(client, timeout=180)
            diagnosis = await client.diagnose()
        accepted = await chaos.accepted_tokens(held)
        report = chaos.check()
        alive = chaos.live_executors()

    assert len(held) == WORKFLOWS, "the freeze hit the executor while it held every first call"
    assert report.ok, report.render()
    assert report.by_status == {"completed": WORKFLOWS}
    assert not diagnosis.violations, diagnosis.violations
    # The same process carried on: it was neither killed by the fault nor replaced.
    assert alive == [frozen]
    # Every task taken back from it was completed (by it: there is no other executor).
    assert all(accepted[task] is not None for task in held), accepted
