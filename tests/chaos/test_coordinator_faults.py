"""The coordinator killed mid-run and restarted, twice: executors reconnect, report what they
held, and carry on; the invariants hold afterwards."""

from __future__ import annotations

import pytest

from bench.chaos.cluster import ChaosCluster, ChaosSettings
from bench.chaos.workload import Workload

pytestmark = pytest.mark.slow


async def test_the_coordinator_killed_and_restarted_twice_mid_run_loses_nothing(
    chaos_settings: ChaosSettings,
) -> None:
    workload = Workload(600, "coordinator")
    with ChaosCluster(chaos_settings) as chaos:
        async with chaos.client() as client:
            await workload.start(client)
            executors = chaos.live_executors()
            for finished in (100, 350):
                await workload.wait_until_finished(client, finished, timeout=120)
                await chaos.restart_coordinator()
            await workload.wait_until_finished(client, timeout=180)
            # The same executors carried on through both restarts: none exited or was replaced.
            assert chaos.live_executors() == executors
        report = chaos.check()

    assert report.ok, report.render()
    assert report.by_status == {"completed": 600}
    assert [fault.kind for fault in report.faults] == ["coordinator SIGKILL + restart"] * 2
