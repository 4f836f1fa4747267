"""PostgreSQL restarts under two coordinators, a leader and a ``--standby`` (issue 14).

Every connection of both breaks and the server is down for a moment (a restart) or for
twice the leader's lease (stopped, then started: a new term must begin), with research
workflows running and executors and a client given both addresses. Afterwards: every
workflow finishes, nothing is applied twice, duplicate LLM calls stay within the tasks
in flight at the fault (bench/chaos/invariants.py), and no two coordinators ever served
work at once (sampled throughout). Whether leadership stayed or moved is printed.

The server restarted is a private one made for this test: never the shared server.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos import postgres
from bench.chaos.failover import FailoverCluster, FailoverSettings
from bench.chaos.workload import Workload

pytestmark = pytest.mark.slow

WORKFLOWS = 40


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Iterator[FailoverSettings]:
    if not database_url.startswith("postgresql"):
        pytest.skip("failover needs PostgreSQL: SQLite allows exactly one coordinator")
    # Not under tmp_path: pytest's directory is private to root, and the server runs as postgres.
    with tempfile.TemporaryDirectory(prefix="conveyor-postgres-") as directory:
        server = postgres.PrivateServer(Path(directory))
        server.start()
        try:
            yield FailoverSettings(
                database_url=server.url,
                workdir=tmp_path / "cluster",
                leader_lease=3.0,
                postgres_server=server,
            )
        finally:
            server.stop()


@pytest.mark.parametrize(
    "down_for",
    [
        pytest.param(0.0, id="restart"),
        # Down for twice the 3 s lease: the leader cannot renew and must stand down; a term
        # starts when the database is back (either coordinator may win it).
        pytest.param(6.0, id="down-past-the-lease"),
    ],
)
async def test_postgres_restarts_under_a_leader_and_a_standby(
    settings: FailoverSettings, down_for: float
) -> None:
    with FailoverCluster(settings) as cluster:
        workload = Workload(WORKFLOWS, "pg-restart")
        overlaps: list[str] = []
        stop_sampling = asyncio.Event()
        sampling = asyncio.create_task(cluster.sample_leaders(stop_sampling, overlaps))
        try:
            async with cluster.client() as client:
                await workload.start(client)
                await workload.wait_until_finished(client, at_least=WORKFLOWS // 4, timeout=180)
                first = await cluster.restart_database(down_for)
                await workload.wait_until_finished(client, at_least=WORKFLOWS // 2, timeout=180)
                second = await cluster.restart_database(down_for)
                await workload.wait_until_finished(client, timeout=300)
        finally:
            stop_sampling.set()
            samples = await sampling
        report = cluster.check()
        assert report.ok, report.render() + "\n" + cluster.log_tails()
        assert report.workflows == WORKFLOWS and not report.unfinished
        assert samples > 0
        assert overlaps == [], "\n".join(overlaps) + "\n" + cluster.log_tails()
        # Terms only grow; one coordinator leads and serves at the end.
        assert first[0] <= first[1] <= second[0] <= second[1], (first, second)
        if down_for > 0:
            assert first[1] > first[0] and second[1] > second[0], (first, second)
        _term, leader = await cluster.current_leader()
        serving = [name for name in cluster.addresses if await cluster.serving(name)]
        assert serving == [leader], (serving, leader)
        print(f"leader terms across the restarts: {first} then {second}; {samples} health samples")
