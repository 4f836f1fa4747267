"""Scale: does the cost per step stay flat from 10,000 to 100,000 workflows?

The engine-overhead workload (four-step workflows, latency 0, real SDK) at two sizes
on each database, all workflows started as fast as the coordinator accepts them.
Reported per run: sustained steps/s (10%-90% of workflows finished), coordinator
CPU-seconds per 1,000 steps, the coordinator's peak RSS and its RSS over time, and
the database's size on disk afterwards (tables and indexes, including the journal
of every finished workflow, which Conveyor keeps).
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

from rich.console import Console

from ..harness import machine, plots, report, timings
from ..harness.databases import fresh_database
from ..harness.options import add_common_arguments, database_kinds, int_list
from ..harness.workload import STEPS_PER_WORKFLOW, ClusterShape, RunOutcome, run_on_cluster

NAME = "scale"
MiB = 2**20
#: The bar from the brief: flat steps/s from 10k to 100k workflows.
FLAT_BAR = 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--sizes", type=int_list, default=[10_000, 100_000], help="workflow counts (default 10000,100000)"
    )
    parser.add_argument("--executors", type=int, default=2, help="executor processes (default %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=100, help="slots per executor (default %(default)s)"
    )
    add_common_arguments(parser)


def measure(outcome: RunOutcome, database_bytes: int) -> dict[str, Any]:
    run = outcome.timings
    done = sorted(w.completed_at for w in run.workflows if w.completed_at is not None)
    low, high = int(0.1 * (len(done) - 1)), int(0.9 * (len(done) - 1))
    window_steps = (high - low) * STEPS_PER_WORKFLOW
    cpu = outcome.cpu_seconds(["coordinator"], done[low], done[high])
    series = outcome.sampler.series["coordinator"]
    offset = run.origin - outcome.monotonic_to_wall
    return {
        "workflows": len(run.workflows),
        "failed": sum(1 for w in run.workflows if w.status != "completed"),
        "steps_per_second": timings.sustained_rate(done, STEPS_PER_WORKFLOW),
        "start_seconds": outcome.start_seconds,
        "span_seconds": done[-1],
        "coordinator_cpu_per_1000_steps": 1000 * cpu / window_steps,
        "coordinator_peak_rss_mib": series.peak_rss() / MiB,
        "database_mib": database_bytes / MiB,
        "other_load_cores": outcome.other_load(done[low], done[high]),
        "database_bytes_per_workflow": database_bytes / len(run.workflows),
        "coordinator_rss_mib_over_time": [
            (t - offset, rss / MiB) for t, rss in zip(series.times, series.rss_bytes, strict=True)
        ],
    }


def run(args: argparse.Namespace) -> int:
    console = Console()
    kinds = database_kinds(args.db)
    out = report.ResultsDirectory(NAME, args.results)
    info = machine.describe(args.postgres_url if "postgresql" in kinds else None)
    console.print(
        f"[bold]Scale[/bold]: {', '.join(f'{size:,}' for size in args.sizes)} workflows, {args.executors} "
        f"executors x {args.concurrency}, latency 0; results in {out.path}/"
    )
    results: dict[str, dict[int, dict[str, Any]]] = {kind: {} for kind in kinds}
    shape = ClusterShape(args.executors, args.concurrency)
    for kind, size in itertools.product(kinds, args.sizes):
        name = f"{kind}-{size}"
        with fresh_database(kind, out.workdir(name), args.postgres_url) as database:
            outcome = run_on_cluster(
                database, out.workdir(name), shape, size, console, label=name, time_limit=3600
            )
            size_bytes = database.size_bytes()
        results[kind][size] = measure(outcome, size_bytes)
    smallest, largest = min(args.sizes), max(args.sizes)
    rows = [
        [
            kind,
            f"{size:,}",
            r["steps_per_second"],
            r["span_seconds"],
            r["start_seconds"],
            r["coordinator_cpu_per_1000_steps"],
            r["coordinator_peak_rss_mib"],
            r["database_mib"],
            r["database_bytes_per_workflow"],
            r["other_load_cores"],
            r["failed"],
        ]
        for kind in kinds
        for size, r in results[kind].items()
    ]
    ratios = {
        kind: results[kind][largest]["steps_per_second"] / results[kind][smallest]["steps_per_second"]
        for kind in kinds
    }
    verdict = "\n".join(
        f"- {kind}: steps/s at {largest:,} = **{ratio:.2f}x** the rate at {smallest:,} "
        f"(bar: flat, >= {FLAT_BAR})"
        for kind, ratio in ratios.items()
    )
    rss_plot = plots.timelines(
        out.plot("scale-rss"),
        "Coordinator memory (RSS) during each run",
        {
            f"{kind} {size:,}": results[kind][size]["coordinator_rss_mib_over_time"]
            for kind in kinds
            for size in args.sizes
        },
        "coordinator RSS (MiB)",
    )
    rate_plot = plots.grouped_bars(
        out.plot("scale-throughput"),
        f"Sustained steps/s by batch size ({args.executors} executors x {args.concurrency}, latency 0)",
        [f"{size:,} workflows" for size in args.sizes],
        {kind: [results[kind][size]["steps_per_second"] for size in args.sizes] for kind in kinds},
        "workflow steps per second",
    )
    summary = (
        f"Four-step workflows, latency 0, {args.executors} executors x {args.concurrency} slots, all started "
        "at once; one run per size.\n\n"
        + report.table(
            [
                "database",
                "workflows",
                "steps/s (sustained)",
                "span (s)",
                "start all (s)",
                "coord. CPU-s / 1k steps",
                "coord. peak RSS MiB",
                "database MiB",
                "bytes / workflow",
                "other load (cores)",
                "failed",
            ],
            rows,
        )
        + "\n"
        + verdict
        + f"\n\n![throughput]({rate_plot.name})\n\n![coordinator RSS]({rss_plot.name})\n"
    )
    out.write(
        info,
        report.options(args),
        {kind: {str(k): v for k, v in r.items()} for kind, r in results.items()},
        summary,
    )
    print(summary)
    return 0 if all(r["failed"] == 0 for kind in kinds for r in results[kind].values()) else 1
