"""``make chaos``: thousands of workflows under every fault in turn, then the invariant report.

``python -m bench.chaos --workflows 10000`` starts a fresh database (PostgreSQL by
default, in a schema of its own), a simulator, a coordinator and several
executors, starts the workflows, and injects the faults of :data:`SCHEDULE` as the
run passes each mark (a share of the workflows finished): executors killed, frozen
past their lease and restarted under their own id, the coordinator killed and
restarted (once while an executor drains), the database restarted and its
connections killed, an overload storm. When every workflow has finished it checks
the invariants (:mod:`bench.chaos.invariants`), prints the report, and writes it as
JSON and text with a timeline plot under ``results/chaos/``. Exit status 0 means
every promise held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from conveyor.client.client import AsyncClient
from conveyor.client.models import WorkflowStatus

from ..harness.databases import DEFAULT_POSTGRES_URL, fresh_database
from . import postgres
from .cluster import ChaosCluster, ChaosSettings, NothingToHit
from .invariants import InvariantReport
from .workload import Workload

Action = Callable[[ChaosCluster, AsyncClient], Awaitable[None]]

STORM_SECONDS = 3.0
#: How long an executor draining through a coordinator restart may take to exit.
DRAIN_BOUND = 120.0
#: How often the progress bar and the timeline are updated.
SAMPLE_INTERVAL = 0.5


async def kill_executor(chaos: ChaosCluster, client: AsyncClient) -> None:
    await chaos.kill_executor()


async def freeze_executor(chaos: ChaosCluster, client: AsyncClient) -> None:
    await chaos.pause_executor_past_lease(await chaos.busy_executor())


async def restart_executor_in_place(chaos: ChaosCluster, client: AsyncClient) -> None:
    await chaos.restart_executor_in_place()


async def drain_through_coordinator_restart(chaos: ChaosCluster, client: AsyncClient) -> None:
    code = await chaos.drain_through_coordinator_restart(within=DRAIN_BOUND)
    if code != 0:  # the invariants may still hold; the drain promise did not
        raise AssertionError(f"an executor draining through a coordinator restart exited with {code}")


async def restart_coordinator(chaos: ChaosCluster, client: AsyncClient) -> None:
    await chaos.restart_coordinator()


async def restart_database(chaos: ChaosCluster, client: AsyncClient) -> None:
    await chaos.restart_database()


async def kill_database_connections(chaos: ChaosCluster, client: AsyncClient) -> None:
    if chaos.is_postgres:  # SQLite has no connections to kill
        await chaos.kill_database_connections()


async def overload_storm(chaos: ChaosCluster, client: AsyncClient) -> None:
    """A third of the calls answered 529 for a few seconds: shorter than the backoff of the
    attempts a step has (1 + 2 + 4 + 8 s before its fifth), so every step gets through."""
    chaos.configure_simulator("529 storm", error_529=0.3)
    try:
        await asyncio.sleep(STORM_SECONDS)
    finally:
        chaos.configure_simulator("end of 529 storm", error_529=0.0)


#: (share of the workflows finished, fault): each fault is injected once the run passes its mark.
#: A short run can finish before its last marks: an executor fault then finds no executor
#: holding tasks (NothingToHit) and the faults left are skipped.
SCHEDULE: Sequence[tuple[float, Action]] = (
    (0.05, kill_executor),
    (0.10, restart_executor_in_place),
    (0.15, kill_executor),
    (0.20, freeze_executor),
    (0.25, kill_executor),
    (0.30, restart_coordinator),
    (0.35, kill_executor),
    (0.40, drain_through_coordinator_restart),
    (0.45, restart_database),
    (0.50, freeze_executor),
    (0.55, kill_executor),
    (0.60, restart_coordinator),
    (0.65, kill_executor),
    (0.70, kill_database_connections),
    (0.75, kill_executor),
    (0.80, overload_storm),
    (0.85, kill_executor),
)


@dataclass
class SoakResult:
    report: InvariantReport
    #: (seconds into the run, workflows finished), for the plot.
    timeline: list[tuple[float, int]]
    seconds: float
    #: Where the run's logs are, and its report goes.
    directory: Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workflows", type=int, default=10_000, help="workflows to run (default %(default)s)"
    )
    parser.add_argument(
        "--db",
        default="postgresql",
        help="postgresql (a fresh schema at --postgres-url), sqlite (a fresh file), or a SQLAlchemy URL "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("CONVEYOR_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL,
        help="PostgreSQL server (default $CONVEYOR_TEST_POSTGRES_URL or %(default)s)",
    )
    parser.add_argument("--executors", type=int, default=4, help="executor processes (default %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="slots per executor (default %(default)s)"
    )
    parser.add_argument(
        "--latency", default="uniform:0.05,0.3", help="simulated LLM latency (default %(default)s)"
    )
    parser.add_argument("--lease-ttl", type=float, default=5.0, help="coordinator --lease-ttl (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the simulator and the fault targets")
    parser.add_argument(
        "--results", type=Path, default=Path("results/chaos"), help="where reports go (default %(default)s/)"
    )


async def soak(args: argparse.Namespace, console: Console) -> SoakResult:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = (args.results / stamp).resolve()
    timeline: list[tuple[float, int]] = []
    with fresh_database(args.db, workdir, args.postgres_url) as database:
        settings = ChaosSettings(
            database_url=database.url,
            workdir=workdir / "cluster",
            executors=args.executors,
            concurrency=args.concurrency,
            lease_ttl=args.lease_ttl,
            heartbeat_interval=1.0,
            latency=args.latency,
            llm_timeout=30.0,
            seed=args.seed,
        )
        try:
            with ChaosCluster(settings) as chaos:
                async with chaos.client() as client:
                    await _run(chaos, client, Workload(args.workflows, f"soak {stamp}"), timeline, console)
                    elapsed = chaos.elapsed()
                report = chaos.check()
        finally:
            if database.kind == "postgresql":
                postgres.ensure_running(args.postgres_url)  # whatever happened, leave it up
    return SoakResult(report, timeline, elapsed, workdir)


async def _run(
    chaos: ChaosCluster,
    client: AsyncClient,
    workload: Workload,
    timeline: list[tuple[float, int]],
    console: Console,
) -> None:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("starting", total=workload.count)
        await workload.start(client)

        async def follow() -> None:
            """Sample progress on its own, so the timeline has no gaps while a fault is injected."""
            while True:
                counts = await workload.counts(client)
                finished = sum(n for status, n in counts.items() if status.finished) - workload.earlier
                chaos.run_over = finished >= workload.count
                timeline.append((chaos.elapsed(), finished))
                last = chaos.faults[-1] if chaos.faults else None
                failed = counts.get(WorkflowStatus.FAILED, 0)
                description = f"finished ({failed} failed)" + (f", last fault: {last.kind}" if last else "")
                progress.update(bar, completed=finished, description=description)
                await asyncio.sleep(SAMPLE_INTERVAL)

        follower = asyncio.create_task(follow())
        try:
            for share, action in SCHEDULE:
                await workload.wait_until_finished(client, int(workload.count * share), timeout=1800)
                try:
                    await action(chaos, client)
                except NothingToHit:  # a short run can outrun its schedule
                    console.print(f"every workflow finished before {action.__name__}: the rest are skipped")
                    break
            await workload.wait_until_finished(client, timeout=1800)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        progress.update(bar, completed=workload.count)


def write_results(result: SoakResult, args: argparse.Namespace) -> list[Path]:
    from . import plot  # matplotlib: only once there is something to draw

    directory, report = result.directory, result.report
    summary = {
        "workflows": args.workflows,
        "database": args.db,
        "executors": args.executors,
        "concurrency": args.concurrency,
        "latency": args.latency,
        "lease_ttl": args.lease_ttl,
        "seconds": round(result.seconds, 1),
        "report": report.to_json(),
    }
    json_path = directory / "report.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    text_path = directory / "report.txt"
    text_path.write_text(report.render() + "\n")
    plot_path = plot.timeline(directory / "timeline.png", result.timeline, report.faults, args.workflows)
    return [json_path, text_path, plot_path]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[1])
    add_arguments(parser)
    args = parser.parse_args(argv)
    console = Console()
    result = asyncio.run(soak(args, console))
    console.print(
        f"\n[bold]Chaos soak: {args.workflows} workflows on {args.db} in {result.seconds:.0f}s[/bold]"
    )
    console.print(result.report.render(), highlight=False, markup=False, soft_wrap=True)
    for path in write_results(result, args):
        console.print(f"wrote {path}")
    return 0 if result.report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
