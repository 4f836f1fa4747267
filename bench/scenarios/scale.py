"""Scale: does the cost per step stay flat from 10,000 to 100,000 workflows?

The engine-overhead workload (four-step workflows, latency 0, real SDK) at two sizes
on each database, all workflows started as fast as the coordinator accepts them.
Reported per run: sustained steps/s (10%-90% of workflows finished), coordinator
CPU-seconds per 1,000 steps, the coordinator's peak RSS and its RSS over time, and
the database's size on disk afterwards (tables and indexes, including the journal
of every finished workflow, which Conveyor keeps unless given --retention).

With ``--retention 10s`` the coordinator purges finished workflows that long after they
finished (``conveyor coordinator --retention``), so the database holds the workflows in
flight and the last few seconds' finished ones, whatever the run's size. Purged workflows
leave no timings behind, so the rate is then taken from the finished count the harness
reads once a second (interpolated between samples); every run reports that rate too
(``steps/s (1 s samples)``), to compare the two methods.
"""

from __future__ import annotations

import argparse
import itertools
import math
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
    parser.add_argument(
        "--retention",
        metavar="DURATION",
        default=None,
        help="run the coordinator with --retention DURATION (e.g. 10s): finished workflows are purged "
        "during the run (default: kept)",
    )
    add_common_arguments(parser)


def measure(outcome: RunOutcome, database_bytes: int, size: int, *, purged: bool) -> dict[str, Any]:
    """The run's numbers; with ``purged`` (retention on) from the finished-count samples alone."""
    run = outcome.timings
    progress = outcome.progress
    first, last, sampled_rate = timings.sustained_rate_from_progress(progress, size, STEPS_PER_WORKFLOW)
    series = outcome.sampler.series["coordinator"]
    if purged:
        began = outcome.began_monotonic
        span = next((t for t, finished in outcome.progress if finished >= size), math.nan)
        window_steps = 0.8 * size * STEPS_PER_WORKFLOW
        cpu = outcome.sampler.cpu_between(["coordinator"], began + first, began + last)
        other = outcome.sampler.other_cpu_between(began + first, began + last) / (last - first)
        rate, offset = sampled_rate, began
    else:
        done = sorted(w.completed_at for w in run.workflows if w.completed_at is not None)
        low, high = int(0.1 * (len(done) - 1)), int(0.9 * (len(done) - 1))
        window_steps = (high - low) * STEPS_PER_WORKFLOW
        cpu = outcome.cpu_seconds(["coordinator"], done[low], done[high])
        other = outcome.other_load(done[low], done[high])
        rate, span = timings.sustained_rate(done, STEPS_PER_WORKFLOW), done[-1]
        offset = run.origin - outcome.monotonic_to_wall
    return {
        "workflows": size,
        "workflows_kept": len(run.workflows),
        # Of the workflows still in the database (retention purges finished ones, failed too).
        "failed": sum(1 for w in run.workflows if w.status != "completed"),
        "steps_per_second": rate,
        "steps_per_second_sampled": sampled_rate,
        "start_seconds": outcome.start_seconds,
        "span_seconds": span,
        "coordinator_cpu_per_1000_steps": 1000 * cpu / window_steps,
        "coordinator_peak_rss_mib": series.peak_rss() / MiB,
        "database_mib": database_bytes / MiB,
        "other_load_cores": other,
        "database_bytes_per_workflow": database_bytes / size,
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
    coordinator_args = ("--retention", args.retention) if args.retention else ()
    shape = ClusterShape(args.executors, args.concurrency, coordinator_args=coordinator_args)
    for kind, size in itertools.product(kinds, args.sizes):
        name = f"{kind}-{size}"
        with fresh_database(kind, out.workdir(name), args.postgres_url) as database:
            outcome = run_on_cluster(
                database, out.workdir(name), shape, size, console, label=name, time_limit=3600
            )
            size_bytes = database.size_bytes()
        results[kind][size] = measure(outcome, size_bytes, size, purged=bool(args.retention))
    smallest, largest = min(args.sizes), max(args.sizes)
    rows = [
        [
            kind,
            f"{size:,}",
            r["steps_per_second"],
            r["steps_per_second_sampled"],
            r["span_seconds"],
            r["start_seconds"],
            r["coordinator_cpu_per_1000_steps"],
            r["coordinator_peak_rss_mib"],
            r["database_mib"],
            r["database_bytes_per_workflow"],
            r["other_load_cores"],
            r["workflows_kept"],
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
    retention = f"retention {args.retention}" if args.retention else "no retention"
    summary = (
        f"Four-step workflows, latency 0, {args.executors} executors x {args.concurrency} slots, all started "
        f"at once, {retention}; one run per size.\n\n"
        + report.table(
            [
                "database",
                "workflows",
                "steps/s (sustained)",
                "steps/s (1 s samples)",
                "span (s)",
                "start all (s)",
                "coord. CPU-s / 1k steps",
                "coord. peak RSS MiB",
                "database MiB",
                "bytes / workflow",
                "other load (cores)",
                "kept in database",
                "failed (of kept)",
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
