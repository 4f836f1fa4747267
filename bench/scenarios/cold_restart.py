"""Cold restart: how long N long agent loops take to move again after a coordinator restart.

``python -m bench agent-loop --cold-restart N`` starts N agent loops far longer than the
run (``--cold-restart-turns``), lets them reach about ``--cold-restart-depth`` turns each
(counted by the simulator's LLM calls, so the depth is an average, reported as measured
from the journal), SIGKILLs the coordinator and starts a new one on the same port. The new
process has an empty workflow cache: every loop's next step needs one replay of its whole
journal. Measured: from the kill, and from the new coordinator listening, until each loop's
first step enqueued after the kill (p50 / p99 / all N), and the new coordinator's CPU over
that time. The executors stay up and reconnect, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from rich.console import Console

from conveyor.client.client import AsyncClient
from conveyor.coordinator.store.schema import steps, workflows

from ..agent import NAME as WORKFLOW_NAME
from ..agent import agent_args
from ..cluster import ClusterSpec, LocalCluster
from ..harness import timings
from ..harness.databases import fresh_database
from ..harness.workload import BenchmarkError, simulator_stats

US = 1_000_000
START_BATCH = 1000


def _moved_since(engine: sa.Engine, since_us: int) -> dict[str, int]:
    """Each loop's first step enqueued at or after ``since_us`` (Unix microseconds)."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(steps.c.workflow_id, sa.func.min(steps.c.created_at))
            .join(workflows, workflows.c.id == steps.c.workflow_id)
            .where(workflows.c.name == WORKFLOW_NAME, steps.c.created_at >= since_us)
            .group_by(steps.c.workflow_id)
        ).all()
    return {str(row[0]): int(row[1]) for row in rows}


def _depths(engine: sa.Engine, before_us: int) -> list[int]:
    """Journal steps each loop had before ``before_us``."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(sa.func.count())
            .select_from(steps.join(workflows, workflows.c.id == steps.c.workflow_id))
            .where(workflows.c.name == WORKFLOW_NAME, steps.c.created_at < before_us)
            .group_by(steps.c.workflow_id)
        ).all()
    return [int(row[0]) for row in rows]


async def _start(address: str, count: int, turns: int, tool_every: int) -> None:
    async with AsyncClient(address, timeout=120) as client:
        for offset in range(0, count, START_BATCH):
            batch = range(offset, min(offset + START_BATCH, count))
            await client.start_workflows([(WORKFLOW_NAME, agent_args(i, turns, tool_every)) for i in batch])


def run_cold_restart(args: argparse.Namespace, kind: str, workdir: Path, console: Console) -> dict[str, Any]:
    count, depth, turns = args.cold_restart, args.cold_restart_depth, args.cold_restart_turns
    with fresh_database(kind, workdir, args.postgres_url) as database:
        spec = ClusterSpec(
            database_url=database.url,
            workdir=workdir,
            workflow_modules=("bench.agent",),
            executors=args.executors,
            concurrency=args.concurrency,
            simulator_args=("--latency", "fixed:0"),
            coordinator_args=tuple(shlex.split(args.coordinator_args)),
            executor_args=("--handlers", "bench.agent"),
        )
        engine = sa.create_engine(database.url)
        try:
            with LocalCluster(spec) as cluster:
                assert cluster.simulator_url is not None and cluster.coordinator is not None
                asyncio.run(_start(cluster.coordinator_address, count, turns, args.tool_every))
                began = time.monotonic()
                while simulator_stats(cluster.simulator_url).get("requests", 0) < count * depth:
                    if time.monotonic() - began > args.time_limit:
                        raise BenchmarkError(
                            f"{count} loops did not reach {depth} turns within {args.time_limit:.0f}s"
                        )
                    time.sleep(1.0)
                reach_seconds = time.monotonic() - began
                port = int(cluster.coordinator_address.rsplit(":", 1)[1])
                killed_us = int(time.time() * US)
                cluster.coordinator.signal(signal.SIGKILL)
                cluster.coordinator.process.wait()
                restarted = time.monotonic()
                cluster.start_coordinator(port)
                listening_us = int(time.time() * US)
                listening = time.monotonic() - restarted
                process = psutil.Process(cluster.coordinator.process.pid)
                console.print(
                    f"  {kind} cold restart: {count:,} loops killed after {reach_seconds:.0f}s; "
                    f"new coordinator listening in {listening:.1f}s"
                )
                moved: dict[str, int] = {}
                while len(moved) < count:
                    if time.monotonic() - restarted > args.time_limit:
                        raise BenchmarkError(
                            f"only {len(moved)} of {count} loops moved within {args.time_limit:.0f}s"
                        )
                    time.sleep(0.5)
                    moved = _moved_since(engine, killed_us)
                cpu = process.cpu_times()
                cpu_seconds = cpu.user + cpu.system
                rss_mib = process.memory_info().rss / 2**20
                depths = _depths(engine, killed_us)
        finally:
            engine.dispose()
    after_kill = sorted((first - killed_us) / US for first in moved.values())
    after_listen = [max(0.0, (first - listening_us) / US) for first in moved.values()]
    return {
        "workflows": count,
        "turns": turns,
        "target_depth_turns": depth,
        "depth_steps_mean": statistics.fmean(depths) if depths else 0.0,
        "depth_steps_min": min(depths, default=0),
        "depth_steps_max": max(depths, default=0),
        "seconds_to_reach_depth": reach_seconds,
        "coordinator_listening_seconds": listening,
        "moved_after_kill_s": timings.summary(after_kill),
        "moved_after_listening_s": timings.summary(after_listen),
        "all_moved_after_kill_s": max(after_kill, default=0.0),
        "new_coordinator_cpu_seconds": cpu_seconds,
        "new_coordinator_rss_mib": rss_mib,
    }
