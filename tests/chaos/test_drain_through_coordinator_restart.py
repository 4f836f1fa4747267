"""Executors draining (after BumpEpoch) while the coordinator is killed and restarted.

Every executor holds LLM calls of twenty seconds when BumpEpoch tells it to drain, and
the coordinator is SIGKILLed at once and started again on the same port. The drainers
must reconnect *as draining* (no new work), keep heartbeating so the new coordinator
keeps their tasks leased to them past its lease TTL, report what they finish, and exit
0. Issue 9 (item 12) found that a draining executor whose stream dropped stopped
heartbeating: its running tasks were requeued after the lease and run twice.

The calls outlast the lease TTL counted from the restart, so a drainer that does not
heartbeat after its reconnect loses its tasks before it can report them. The TTL
itself is long enough for a reconnect with backoff on a busy machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from bench.chaos.cluster import ChaosCluster, ChaosSettings
from bench.chaos.workload import Workload

pytestmark = pytest.mark.slow

CALL_SECONDS = 20.0
LEASE_TTL = 8.0
WORKFLOWS = 16


async def wait_until(condition: Callable[[], bool], what: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f}s")
        await asyncio.sleep(0.1)


def log_of(chaos: ChaosCluster, executor_id: str) -> str:
    return chaos.executors[executor_id].log_path.read_text(errors="replace")


def reconnected_draining(coordinator_log: str, executor_id: str) -> bool:
    """The coordinator logged ``executor_id``'s Hello as one of a draining executor."""
    return any(
        f"executor {executor_id} connected" in line and "(draining)" in line
        for line in coordinator_log.splitlines()
    )


async def test_executors_draining_through_a_coordinator_restart_reconnect_report_and_exit_0(
    chaos_settings: ChaosSettings,
) -> None:
    settings = replace(
        chaos_settings,
        executors=2,
        concurrency=WORKFLOWS // 2,  # every first call running means both executors hold some
        lease_ttl=LEASE_TTL,
        latency=f"fixed:{CALL_SECONDS}",
        llm_timeout=CALL_SECONDS * 4,
    )
    workload = Workload(WORKFLOWS, "drain through restart")
    with ChaosCluster(settings) as chaos:
        drainers = chaos.live_executors()
        async with chaos.client() as client:
            await workload.start(client)
            # Every workflow's first call is running at the API, on one executor or the other.
            await wait_until(
                lambda: chaos.simulator_stats()["in_flight"] >= WORKFLOWS,
                "every workflow's first LLM call running",
                timeout=120,
            )
            assert await chaos.bump_epoch(client) == drainers
            # Each drainer has been told (it logs it): from now on it claims nothing.
            await wait_until(
                lambda: all("draining (coordinator:" in log_of(chaos, name) for name in drainers),
                "both executors logged that they drain",
                timeout=60,
            )
            await chaos.restart_coordinator()
            codes = [await chaos.wait_exit(name, within=CALL_SECONDS * 4) for name in drainers]
            # Drained: the rest of the run goes fast, on executors of the new epoch.
            chaos.configure_simulator("fast calls for the new executors", latency="uniform:0.02,0.08")
            chaos.add_executor()
            chaos.add_executor()
            await workload.wait_until_finished(client, timeout=180)
        assert chaos.cluster.coordinator is not None
        new_coordinator_log = chaos.cluster.coordinator.log_path.read_text(errors="replace")
        report = chaos.check()

    assert report.faults[1].in_flight == WORKFLOWS, "the coordinator died while the drainers held every task"
    assert codes == [0, 0], "each drainer reported everything and exited cleanly"
    # They finished their drain through the new coordinator, having told it they drain.
    assert all(reconnected_draining(new_coordinator_log, name) for name in drainers), new_coordinator_log
    assert report.ok, report.render()
    assert report.by_status == {"completed": WORKFLOWS}
    # Nothing the drainers held was taken back and run again by the new executors.
    assert report.duplicate_llm_calls == 0
