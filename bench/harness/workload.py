"""Driving a cluster: start workflows as fast as it accepts them, watch them finish.

:func:`run_on_cluster` is the whole life of one measured run: start the processes
(:class:`~bench.cluster.LocalCluster`), sample their CPU and memory, start the
workflows, show progress until they are done (or a time limit passes), stop
everything, and read the timings back from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from conveyor.client.client import AsyncClient
from conveyor.client.models import WorkflowStatus
from conveyor.errors import ConveyorError

from ..cluster import ClusterSpec, LocalCluster
from ..workflows import TOPICS
from . import profiling, timings
from .databases import RunDatabase, autovacuum_stand_in
from .sampler import ProcessSampler

STEPS_PER_WORKFLOW = 4
#: Workflows per StartWorkflows call (the coordinator's limit) and calls in flight at once.
START_BATCH = 1000
START_CALLS_IN_FLIGHT = 4
#: Without a terminal (a log file, CI) progress is a plain line this often, in seconds.
LOG_LINE_INTERVAL = 10.0


class BenchmarkError(ConveyorError):
    """A benchmark run could not produce its numbers (a process died, workflows stalled...)."""


@dataclass(frozen=True)
class ClusterShape:
    executors: int
    concurrency: int
    simulator_args: Sequence[str] = ("--latency", "fixed:0")
    coordinator_args: Sequence[str] = ()
    executor_args: Sequence[str] = ()
    #: See :attr:`bench.cluster.ClusterSpec.coordinator_module`.
    coordinator_module: str = "conveyor.cli"
    #: Extra environment for every process of the cluster.
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class RunOutcome:
    timings: timings.RunTimings
    sampler: ProcessSampler
    #: time.time() - time.monotonic() during the run, to place sampler times on the wall clock.
    monotonic_to_wall: float
    #: Seconds from the first StartWorkflows call until every workflow was accepted.
    start_seconds: float
    simulator_stats: dict[str, Any]
    exit_codes: dict[str, int]
    executor_names: list[str]
    #: Simulator counters sampled once a second: (seconds since the first start, stats).
    simulator_series: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    timed_out: bool = False
    #: The harness vacuumed and analyzed PostgreSQL's tables (the server has autovacuum off).
    vacuumed_by_harness: bool = False
    #: Workflows finished, counted once a second: (seconds since the first start call, count).
    #: The timings of a run with retention lack the purged workflows; this series does not.
    progress: list[tuple[float, int]] = field(default_factory=list)
    #: time.monotonic() of the first start call (the zero of ``progress``).
    began_monotonic: float = 0.0

    def cpu_seconds(self, names: list[str], start: float, end: float) -> float:
        """CPU of ``names`` between two times given in seconds since the first workflow started."""
        offset = self.timings.origin - self.monotonic_to_wall
        return self.sampler.cpu_between(names, offset + start, offset + end)

    def other_load(self, start: float, end: float) -> float:
        """CPU cores that processes outside this run kept busy between two times (on average)."""
        offset = self.timings.origin - self.monotonic_to_wall
        return (
            self.sampler.other_cpu_between(offset + start, offset + end) / (end - start)
            if end > start
            else 0.0
        )


def research_args(index: int) -> dict[str, str]:
    """Arguments of the ``index``-th workflow; unique, so the simulator can spot duplicate calls."""
    return {"topic": f"{TOPICS[index % len(TOPICS)]} #{index}"}


@dataclass(frozen=True)
class Workload:
    """Which workflow a run starts, with what arguments, and how many steps each one takes."""

    name: str = "research"
    args: Callable[[int], Any] = research_args
    steps_per_workflow: int = STEPS_PER_WORKFLOW


#: The seed's four-step research workflow (:mod:`bench.workflows`), the default of every run.
RESEARCH = Workload()


def run_on_cluster(
    database: RunDatabase,
    workdir: Path,
    shape: ClusterShape,
    workflows: int,
    console: Console,
    *,
    label: str,
    time_limit: float = 3600.0,
    stop_when: Callable[[float, dict[str, Any]], bool] | None = None,
    profile: bool = False,
    workload: Workload = RESEARCH,
) -> RunOutcome:
    """Run ``workflows`` research workflows on a fresh cluster and return what happened.

    ``stop_when(elapsed, simulator_stats)`` may end the run early (the rate-limit
    scenario measures a window, not a drain); otherwise the run lasts until every
    workflow finished, or fails after ``time_limit`` seconds. With ``profile`` the
    coordinator and the first executor are recorded as flame graphs into ``workdir``.
    """
    spec = ClusterSpec(
        database_url=database.url,
        workdir=workdir,
        executors=shape.executors,
        concurrency=shape.concurrency,
        simulator_args=tuple(shape.simulator_args),
        coordinator_args=tuple(shape.coordinator_args),
        executor_args=tuple(shape.executor_args),
        env=dict(shape.env),
        coordinator_module=shape.coordinator_module,
    )
    with LocalCluster(spec) as cluster:
        assert cluster.coordinator is not None and cluster.simulator_url is not None
        pids = {"coordinator": cluster.coordinator.process.pid}
        pids.update({executor.name: executor.process.pid for executor in cluster.executors})
        if cluster.simulator is not None:
            pids["simulator"] = cluster.simulator.process.pid
        monotonic_to_wall = time.time() - time.monotonic()
        profiled = {name: pids[name] for name in ("coordinator", "executor-1")} if profile else {}
        with (
            ProcessSampler(pids) as sampler,
            profiling.flame_graphs(profiled, workdir),
            autovacuum_stand_in(database) as vacuuming,
        ):
            try:
                driven = asyncio.run(
                    _drive(
                        cluster.coordinator_address,
                        cluster.simulator_url,
                        shape.executors,
                        workflows,
                        console,
                        label,
                        time_limit,
                        stop_when,
                        workload,
                    )
                )
            except BaseException:
                console.print(f"[red]run failed; process logs end with:[/red]\n{cluster.log_tails(10)}")
                raise
        exit_codes = cluster.stop()
    return RunOutcome(
        timings=timings.load(database.url, workload.name),
        sampler=sampler,
        monotonic_to_wall=monotonic_to_wall,
        start_seconds=driven.start_seconds,
        simulator_stats=driven.simulator_series[-1][1] if driven.simulator_series else {},
        exit_codes=exit_codes,
        executor_names=[executor.name for executor in cluster.executors],
        simulator_series=driven.simulator_series,
        timed_out=driven.timed_out,
        vacuumed_by_harness=vacuuming,
        progress=driven.progress,
        began_monotonic=driven.began,
    )


@dataclass
class _Driven:
    start_seconds: float = 0.0
    simulator_series: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    timed_out: bool = False
    progress: list[tuple[float, int]] = field(default_factory=list)
    began: float = 0.0


async def _drive(
    address: str,
    simulator_url: str,
    executors: int,
    count: int,
    console: Console,
    label: str,
    time_limit: float,
    stop_when: Callable[[float, dict[str, Any]], bool] | None,
    workload: Workload,
) -> _Driven:
    driven = _Driven()
    async with AsyncClient(address, timeout=120) as client:
        await _wait_for_executors(client, executors)
        with Progress(
            TextColumn(f"{label:<28.28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            transient=False,
        ) as progress:
            bar = progress.add_task("run", total=count, detail="starting")
            accepted = [0]
            began = driven.began = time.monotonic()
            starting = asyncio.create_task(_start_all(client, workload, count, accepted))
            finished = 0
            next_log_line = LOG_LINE_INTERVAL
            while True:
                await asyncio.sleep(1.0)
                elapsed = time.monotonic() - began
                stats = await asyncio.to_thread(simulator_stats, simulator_url)
                driven.simulator_series.append((elapsed, stats))
                if starting.done():
                    driven.start_seconds = driven.start_seconds or starting.result()
                counts = await client.count_workflows(workload.name)
                # With retention, purged workflows leave the counts: the started ones not
                # running any more have finished. (Without, the counts say so exactly.)
                finished = max(
                    sum(n for status, n in counts.items() if status.finished),
                    accepted[0] - counts[WorkflowStatus.RUNNING],
                )
                driven.progress.append((time.monotonic() - began, finished))
                failed = counts[WorkflowStatus.FAILED]
                progress.update(
                    bar,
                    completed=finished,
                    detail=f"started {accepted[0]:,}, {stats.get('requests', 0):,} LLM calls, "
                    f"{finished * workload.steps_per_workflow / elapsed:,.0f} steps/s, "
                    f"{stats.get('rate_limited', 0):,} x 429, {failed} failed",
                )
                if not console.is_terminal and elapsed >= next_log_line:  # logs get a line every 10 s
                    next_log_line += LOG_LINE_INTERVAL
                    console.print(
                        f"{label}: {elapsed:.0f}s, {finished:,}/{count:,} finished, {failed} failed, "
                        f"{stats.get('requests', 0):,} LLM calls"
                    )
                if stop_when is not None and stop_when(elapsed, stats):
                    break
                if finished >= count:
                    break
                if elapsed > time_limit:
                    driven.timed_out = True
                    break
            await _finish(starting)
    if driven.timed_out:
        console.print(
            f"[yellow]{label}: stopped after {time_limit:.0f}s with {finished}/{count} finished[/yellow]"
        )
    return driven


async def _finish(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _start_all(client: AsyncClient, workload: Workload, count: int, accepted: list[int]) -> float:
    """Start ``count`` workflows with a few StartWorkflows calls in flight; returns the seconds it took.

    ``accepted[0]`` counts the workflows started so far, for the progress display.
    """
    began = time.monotonic()
    batches = asyncio.Queue[range]()
    for offset in range(0, count, START_BATCH):
        batches.put_nowait(range(offset, min(offset + START_BATCH, count)))

    async def starter() -> None:
        while not batches.empty():
            batch = batches.get_nowait()
            await client.start_workflows([(workload.name, workload.args(i)) for i in batch])
            accepted[0] += len(batch)

    await asyncio.gather(*(starter() for _ in range(START_CALLS_IN_FLIGHT)))
    return time.monotonic() - began


async def _wait_for_executors(client: AsyncClient, expected: int) -> None:
    deadline = time.monotonic() + 120
    live = 0
    while time.monotonic() < deadline:
        live = sum(1 for e in (await client.diagnose()).executors if e.state == "live")
        if live >= expected:
            return
        await asyncio.sleep(0.2)
    raise BenchmarkError(f"only {live} of {expected} executors connected within 120s; see their logs")


def simulator_stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/_sim/stats", timeout=10) as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats
