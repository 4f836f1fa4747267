"""Failover between two real coordinator processes on PostgreSQL (issue 14).

A leader and a ``--standby``, executors and a client given both addresses, and research
workflows running when the leader is SIGKILLed, SIGSTOPped past the takeover bound (then
SIGCONTed: its late writes must be refused and it must step down), or cut off from the
database by a blackholing proxy while the standby's connections stay up. After each: every
workflow finishes, nothing is applied twice, duplicate LLM calls stay within the tasks in
flight at the fault (bench/chaos/invariants.py). Takeover times are printed, not asserted.

Each coordinator gets this test's own schema on the shared server (never restarted).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos.failover import FailoverCluster, FailoverSettings, Takeover
from bench.chaos.workload import Workload

pytestmark = pytest.mark.slow

WORKFLOWS = 60


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Iterator[FailoverSettings]:
    if not database_url.startswith("postgresql"):
        pytest.skip("failover needs PostgreSQL: SQLite allows exactly one coordinator")
    yield FailoverSettings(database_url=database_url, workdir=tmp_path / "cluster", leader_lease=3.0)


async def run_through(cluster: FailoverCluster, fault: str, label: str) -> list[Takeover]:
    workload = Workload(WORKFLOWS, label)
    async with cluster.client() as client:
        await workload.start(client)
        await workload.wait_until_finished(client, at_least=WORKFLOWS // 4, timeout=180)
        takeovers = [await getattr(cluster, fault)()]
        # A second fault of the same kind, on the new leader (the old one now stands by).
        await workload.wait_until_finished(client, at_least=WORKFLOWS // 2, timeout=180)
        takeovers.append(await getattr(cluster, fault)())
        await workload.wait_until_finished(client, timeout=300)
    report = cluster.check()
    assert report.ok, report.render() + "\n" + cluster.log_tails()
    assert report.workflows == WORKFLOWS and not report.unfinished
    for takeover in takeovers:
        print(f"takeover after {takeover.fault} of {takeover.old_leader}: {takeover.seconds:.2f}s")
    return takeovers


async def test_the_leader_is_killed_mid_run(settings: FailoverSettings) -> None:
    with FailoverCluster(settings) as cluster:
        takeovers = await run_through(cluster, "kill_leader", "kill")
        assert [t.term for t in takeovers] == [2, 3]
        assert {t.new_leader for t in takeovers} == {"a", "b"}


async def test_a_paused_leader_is_fenced_and_steps_down_when_it_resumes(settings: FailoverSettings) -> None:
    with FailoverCluster(settings) as cluster:
        takeovers = await run_through(cluster, "pause_leader", "pause")
        assert [t.term for t in takeovers] == [2, 3]
        for takeover in takeovers:
            log = cluster.log_of(takeover.old_leader)
            # It woke up leading in its own eyes, was refused, and stood by.
            assert "stepping down" in log and "standing by" in log, log[-3000:]


async def test_a_leader_cut_off_from_the_database_is_replaced_and_steps_down(
    settings: FailoverSettings,
) -> None:
    with FailoverCluster(settings) as cluster:
        takeovers = await run_through(cluster, "blackhole_leader", "blackhole")
        assert [t.term for t in takeovers] == [2, 3]
        for takeover in takeovers:
            assert "stepping down" in cluster.log_of(takeover.old_leader)
