"""The database going away under a running coordinator.

PostgreSQL: the server restarted mid-run, and the coordinator's connections killed
with ``pg_terminate_backend``; the server is a private one of the test's own
(``restartable_chaos_settings``), so other test runs on the machine are not disturbed.
SQLite (one file, no server): another process holds the write lock for seconds. Either
way the coordinator waits, reconnects and loses nothing.
"""

from __future__ import annotations

import pytest

from bench.chaos.cluster import ChaosCluster, ChaosSettings
from bench.chaos.workload import Workload

pytestmark = pytest.mark.slow


async def test_a_database_outage_mid_run_loses_nothing(restartable_chaos_settings: ChaosSettings) -> None:
    workload = Workload(600, "database")
    with ChaosCluster(restartable_chaos_settings) as chaos:
        async with chaos.client() as client:
            await workload.start(client)
            await workload.wait_until_finished(client, 100, timeout=120)
            await chaos.restart_database()
            killed = 0
            if chaos.is_postgres:
                for finished in (250, 400):
                    await workload.wait_until_finished(client, finished, timeout=120)
                    killed += await chaos.kill_database_connections()
            await workload.wait_until_finished(client, timeout=180)
        report = chaos.check()

    assert report.ok, report.render()
    assert report.by_status == {"completed": 600}
    if chaos.is_postgres:
        assert killed >= 2, "the coordinator held database connections to kill"
