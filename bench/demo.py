"""``make demo``: N research workflows on a local cluster, finished in the order they started.

Starts the Anthropic API simulator (or, with ``--llm anthropic``, uses the real API),
a coordinator on an embedded SQLite file (or ``--db URL``) and two executors; starts
N workflows of the seed's shape; shows progress; then prints completion time by
start-order decile (the seed's ``priorityAnalysis``), totals, failures and the
``Diagnose`` invariant check, and stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from conveyor.client.client import AsyncClient
from conveyor.client.models import Workflow, WorkflowStatus
from conveyor.errors import ConveyorError

from .cluster import ClusterSpec, LocalCluster
from .harness.databases import fresh_database, redact
from .workflows import TOPICS

STEPS_PER_WORKFLOW = 4
START_CHUNK = 500


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workflows", type=int, default=1000, help="how many to run (default 1000)")
    parser.add_argument(
        "--db", default="", help="SQLAlchemy URL (default: a new SQLite file under .scratch/)"
    )
    parser.add_argument("--executors", type=int, default=2, help="executor processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=50, help="slots per executor (default 50)")
    parser.add_argument(
        "--latency", default="uniform:0.2,0.6", help="simulated LLM latency (default uniform:0.2,0.6 s)"
    )
    parser.add_argument(
        "--llm",
        choices=("simulator", "anthropic"),
        default=os.environ.get("LLM") or "simulator",
        help="simulator (default) or anthropic: the real API, needs ANTHROPIC_API_KEY",
    )
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL demo schema afterwards")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = Path(".scratch") / f"demo-{stamp}"
    try:
        with fresh_database(args.db or "sqlite", workdir, keep=args.keep) as database:
            spec = ClusterSpec(
                database_url=database.url,
                workdir=workdir,
                executors=args.executors,
                concurrency=args.concurrency,
                simulator_args=None if args.llm == "anthropic" else ("--latency", args.latency),
            )
            console.print(
                f"[bold]Conveyor demo[/bold]: {args.workflows} workflows, {args.executors} executors x "
                f"{args.concurrency} slots, LLM: {args.llm}"
                + (f" ({args.latency})" if args.llm == "simulator" else "")
            )
            console.print(f"database: {redact(database.url)}; logs: {workdir}/")
            with LocalCluster(spec) as cluster:
                ok = asyncio.run(_run(cluster.coordinator_address, args, console))
                codes = cluster.stop()
        bad_exits = {name: code for name, code in codes.items() if code != 0}
        if bad_exits:
            console.print(f"[red]processes exited with errors:[/red] {bad_exits}")
        console.print("all processes stopped" + ("" if bad_exits else " cleanly"))
        return 0 if ok and not bad_exits else 1
    except (ConveyorError, ValueError, KeyboardInterrupt) as error:
        console.print(f"[red]demo failed:[/red] {error or 'interrupted'}; logs in {workdir}/")
        return 1


async def _run(address: str, args: argparse.Namespace, console: Console) -> bool:
    async with AsyncClient(address, timeout=60) as client:
        await _wait_for_executors(client, args.executors)
        total = args.workflows
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
        ) as progress:
            starting = progress.add_task("starting ", total=total, detail="")
            running = progress.add_task("finished ", total=total, detail="")
            began = time.monotonic()
            for offset in range(0, total, START_CHUNK):
                count = min(START_CHUNK, total - offset)
                await client.start_workflows(
                    [
                        ("research", {"topic": f"{TOPICS[i % len(TOPICS)]} #{i}"})
                        for i in range(offset, offset + count)
                    ]
                )
                progress.advance(starting, count)
            while True:
                counts = await client.count_workflows("research")
                finished = sum(n for status, n in counts.items() if status.finished)
                elapsed = time.monotonic() - began
                progress.update(
                    running,
                    completed=finished,
                    detail=f"{finished * STEPS_PER_WORKFLOW / max(elapsed, 1e-9):,.0f} steps/s, "
                    f"{counts[WorkflowStatus.FAILED]} failed",
                )
                if finished >= total:
                    break
                await asyncio.sleep(0.25)
        workflows = [w async for w in client.list_workflows(name="research", page_size=1000)]
        _print_report(console, workflows)
        report = await client.diagnose()
    if report.violations:
        for violation in report.violations:
            console.print(
                f"[red]invariant violated: {violation.kind}[/red] ({violation.count}) {violation.description}"
            )
    else:
        console.print(
            "[green]Diagnose: all invariants hold[/green] (no running workflow without progress or replay)"
        )
    failed = sum(1 for w in workflows if w.status is not WorkflowStatus.COMPLETED)
    return failed == 0 and not report.violations


async def _wait_for_executors(client: AsyncClient, expected: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = sum(1 for e in (await client.diagnose()).executors if e.state == "live")
        if live >= expected:
            return
        await asyncio.sleep(0.2)
    raise ConveyorError(f"only {live} of {expected} executors connected within 60s")


def _print_report(console: Console, workflows: list[Workflow]) -> None:
    workflows = sorted(workflows, key=lambda w: w.created_at or datetime.min)
    assert workflows and workflows[0].created_at is not None
    t0 = workflows[0].created_at
    done = [w for w in workflows if w.completed_at is not None]
    span = max((w.completed_at - t0).total_seconds() for w in done)  # type: ignore[operator]

    table = Table(title="Completion by start order (deciles)")
    for column in (
        "decile",
        "workflows",
        "started (s)",
        "median done (s)",
        "p90 done (s)",
        "median duration (s)",
    ):
        table.add_column(column, justify="right")
    size = max(1, len(workflows) // 10)
    for decile in range(10):
        group = workflows[decile * size : (decile + 1) * size if decile < 9 else len(workflows)]
        if not group:
            continue
        finished_at = sorted((w.completed_at - t0).total_seconds() for w in group if w.completed_at)
        durations = [w.duration for w in group if w.duration is not None]
        first, last = ((w.created_at - t0).total_seconds() for w in (group[0], group[-1]))  # type: ignore[operator]
        table.add_row(
            f"{decile + 1}",
            str(len(group)),
            f"{first:.1f}-{last:.1f}",
            f"{statistics.median(finished_at):.1f}" if finished_at else "-",
            f"{finished_at[int(0.9 * (len(finished_at) - 1))]:.1f}" if finished_at else "-",
            f"{statistics.median(durations):.1f}" if durations else "-",
        )
    console.print(table)
    by_status: dict[str, int] = {}
    for w in workflows:
        by_status[w.status.value] = by_status.get(w.status.value, 0) + 1
    totals = Table(title="Totals", show_header=False)
    totals.add_row("workflows", f"{len(workflows):,}")
    totals.add_row("by status", ", ".join(f"{k} {v:,}" for k, v in sorted(by_status.items())))
    totals.add_row("span (first start → last finish)", f"{span:.1f} s")
    totals.add_row(
        "throughput",
        f"{len(done) / span:,.1f} workflows/s, {len(done) * STEPS_PER_WORKFLOW / span:,.0f} steps/s",
    )
    totals.add_row(
        "median workflow duration", f"{statistics.median(w.duration for w in done if w.duration):.1f} s"
    )
    console.print(totals)
    for w in workflows:
        if w.status is not WorkflowStatus.COMPLETED:
            console.print(f"[red]{w.status.value}[/red] {w.id}: {w.error[:200]}")
            break


if __name__ == "__main__":
    sys.exit(main())
