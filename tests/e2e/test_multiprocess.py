"""The real deployment shape: simulator, coordinator and two executors as separate processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cluster import ClusterSpec, LocalCluster
from bench.workflows import expected_summary
from conveyor.client.client import AsyncClient
from conveyor.client.models import WorkflowStatus
from support import eventually

pytestmark = pytest.mark.slow

WORKFLOWS = 500


async def test_500_research_workflows_complete_correctly_across_processes(
    database_url: str, tmp_path: Path
) -> None:
    spec = ClusterSpec(
        database_url=database_url,
        workdir=tmp_path,
        executors=2,
        concurrency=50,
        simulator_args=("--latency", "uniform:0.01,0.05"),
    )
    cluster = LocalCluster(spec)
    try:
        with cluster:
            await _run_and_check(cluster)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{cluster.log_tails()}") from None


async def _run_and_check(cluster: LocalCluster) -> None:
    async with AsyncClient(cluster.coordinator_address, timeout=30) as client:
        await eventually(lambda: _live_executors(client, 2), timeout=60)
        topics = [f"topic {i}" for i in range(WORKFLOWS)]
        started = await client.start_workflows([("research", {"topic": topic}) for topic in topics])

        async def all_finished() -> bool:
            counts = await client.count_workflows("research")
            return counts[WorkflowStatus.RUNNING] == 0

        await eventually(all_finished, timeout=240, interval=0.5)
        workflows = {w.id: w async for w in client.list_workflows(name="research")}
        report = await client.diagnose()
    codes = cluster.stop()

    assert [workflows[s.workflow_id].status for s in started] == [WorkflowStatus.COMPLETED] * WORKFLOWS
    summaries = [workflows[s.workflow_id].result["summary"] for s in started]
    assert summaries == [expected_summary(topic) for topic in topics]
    assert list(report.violations) == []
    # Both executors were live at the end, and every process shut down cleanly (executors drained).
    assert sorted(info.state for info in report.executors) == ["live", "live"]
    assert codes == {"executor-1": 0, "executor-2": 0, "coordinator": 0, "simulator": 0}


async def _live_executors(client: AsyncClient, expected: int) -> bool:
    report = await client.diagnose()
    return sum(1 for info in report.executors if info.state == "live") >= expected


def test_the_cluster_leaves_no_process_behind(tmp_path: Path) -> None:
    spec = ClusterSpec(database_url=f"sqlite:///{tmp_path / 'c.db'}", workdir=tmp_path, executors=1)
    cluster = LocalCluster(spec)
    with cluster:
        pids = [p.process.pid for p in (cluster.simulator, cluster.coordinator, *cluster.executors) if p]
    assert len(pids) == 3
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
