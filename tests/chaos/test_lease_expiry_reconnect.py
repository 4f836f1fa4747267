"""An executor process frozen (SIGSTOP) past its lease while it runs tasks, then woken (SIGCONT).

The only executor: the tasks the coordinator takes back when its lease expires have
nobody else to go to, so when the woken process reconnects they are claimed again *for
the same executor*, with new tokens, while it may still be running them under the old
ones. Issue 9 (item 4) found that this stranded them: the executor ignored the re-claim
as "already running", reported the old token (rejected as stale), and the task stayed
claimed by a live executor for ever. Here every workflow must still complete, with each
step's result recorded once and no task left claimed by nobody live.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.chaos.cluster import ChaosCluster, ChaosSettings
from bench.chaos.workload import Workload

pytestmark = pytest.mark.slow


async def test_the_only_executor_frozen_past_its_lease_gets_its_tasks_back_and_finishes_them(
    chaos_settings: ChaosSettings,
) -> None:
    # Calls of about a second keep the 25 slots full, so the freeze always hits running tasks.
    settings = replace(chaos_settings, executors=1, latency="uniform:0.5,1.5", llm_timeout=30.0)
    workload = Workload(60, "reclaimed by its holder")
    with ChaosCluster(settings) as chaos:
        [frozen] = chaos.live_executors()
        async with chaos.client() as client:
            await workload.start(client)
            await workload.wait_until_finished(client, 5, timeout=120)
            held = await chaos.pause_executor_past_lease(await chaos.busy_executor())
            # Nobody else serves the queue: only the woken executor can finish what it held.
            await workload.wait_until_finished(client, timeout=180)
            diagnosis = await client.diagnose()
        accepted = await chaos.accepted_tokens(held)
        report = chaos.check()
        alive = chaos.live_executors()

    assert held, "the freeze hit the executor while it held tasks"
    assert report.ok, report.render()
    assert report.by_status == {"completed": 60}
    assert not diagnosis.violations, diagnosis.violations
    # The same process carried on: it was neither killed by the fault nor replaced.
    assert alive == [frozen]
    # Every task taken back from it was completed (by it: there is no other executor).
    assert all(accepted[task] is not None for task in held), accepted
