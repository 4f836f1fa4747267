"""Engine overhead: how many workflow steps per second the engine itself sustains.

The seed's four-step workflow against a zero-latency simulator, through the real
``anthropic`` SDK, so every second spent is Conveyor's (and the SDK's): replay,
queue, gRPC, database commits. Swept over executors x concurrency on each database,
each cell repeated and reported as the median of its runs.

Per run: sustained steps/s (between 10% and 90% of workflows finished, so start-up
and tail are excluded), coordinator CPU-seconds per 1,000 steps in that window,
peak RSS of the coordinator and of the largest executor, and the step transition
gap p50/p99, from a wave's last result being recorded to the next wave's first step
being enqueued (replay: the engine alone) and started on an executor (also waiting
for a free slot: with every slot busy, as here, that is mostly queueing).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from typing import Any

from rich.console import Console

from ..harness import machine, plots, report, timings
from ..harness.databases import fresh_database
from ..harness.options import add_common_arguments, database_kinds, int_list
from ..harness.workload import STEPS_PER_WORKFLOW, ClusterShape, RunOutcome, run_on_cluster

NAME = "overhead"
#: The bar from the brief: >= 1,000 steps/s on SQLite on a 2-core machine.
TARGET_STEPS_PER_SECOND = 1000.0
MiB = 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--workflows", type=int, default=3000, help="workflows per run (default %(default)s)")
    parser.add_argument(
        "--executors", type=int_list, default=[1, 2, 4], help="executor counts to sweep (default 1,2,4)"
    )
    parser.add_argument(
        "--concurrency", type=int_list, default=[50, 200], help="slots per executor to sweep (default 50,200)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per cell; medians are reported (default 3)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record flame graphs of the coordinator and one executor (py-spy) into each run's directory",
    )
    add_common_arguments(parser)


def measure(outcome: RunOutcome) -> dict[str, Any]:
    """The engine-overhead numbers of one run."""
    run = outcome.timings
    done = sorted(w.completed_at for w in run.workflows if w.completed_at is not None)
    low, high = done[int(0.1 * (len(done) - 1))], done[int(0.9 * (len(done) - 1))]
    window_steps = (int(0.9 * (len(done) - 1)) - int(0.1 * (len(done) - 1))) * STEPS_PER_WORKFLOW
    coordinator_cpu = outcome.cpu_seconds(["coordinator"], low, high)
    executor_cpu = outcome.cpu_seconds(outcome.executor_names, low, high)
    gaps = timings.transition_gaps(run)
    return {
        "workflows": len(run.workflows),
        "failed": sum(1 for w in run.workflows if w.status != "completed"),
        "steps_per_second": timings.sustained_rate(done, STEPS_PER_WORKFLOW),
        "span_seconds": done[-1] if done else float("nan"),
        "start_seconds": outcome.start_seconds,
        "coordinator_cpu_per_1000_steps": 1000 * coordinator_cpu / window_steps
        if window_steps
        else float("nan"),
        "executors_cpu_per_1000_steps": 1000 * executor_cpu / window_steps if window_steps else float("nan"),
        "coordinator_peak_rss_mib": outcome.sampler.peak_rss(["coordinator"]) / MiB,
        "executor_peak_rss_mib": outcome.sampler.peak_rss(outcome.executor_names) / MiB,
        "gap_to_enqueue_ms": {key: value * 1000 for key, value in timings.summary(gaps.to_enqueue).items()},
        "gap_to_start_ms": {key: value * 1000 for key, value in timings.summary(gaps.to_start).items()},
        "duplicate_calls": outcome.simulator_stats.get("duplicate_successes", 0),
        "other_load_cores": outcome.other_load(low, high),
        "exit_codes": outcome.exit_codes,
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the runs' numbers, and the spread of steps/s."""
    rates = [run["steps_per_second"] for run in runs]
    return {
        "runs": len(runs),
        "steps_per_second": statistics.median(rates),
        "steps_per_second_min": min(rates),
        "steps_per_second_max": max(rates),
        "coordinator_cpu_per_1000_steps": statistics.median(
            r["coordinator_cpu_per_1000_steps"] for r in runs
        ),
        "executors_cpu_per_1000_steps": statistics.median(r["executors_cpu_per_1000_steps"] for r in runs),
        "coordinator_peak_rss_mib": statistics.median(r["coordinator_peak_rss_mib"] for r in runs),
        "executor_peak_rss_mib": statistics.median(r["executor_peak_rss_mib"] for r in runs),
        "enqueue_gap_p50_ms": statistics.median(r["gap_to_enqueue_ms"]["p50"] for r in runs),
        "enqueue_gap_p99_ms": statistics.median(r["gap_to_enqueue_ms"]["p99"] for r in runs),
        "start_gap_p50_ms": statistics.median(r["gap_to_start_ms"]["p50"] for r in runs),
        "start_gap_p99_ms": statistics.median(r["gap_to_start_ms"]["p99"] for r in runs),
        "failed": sum(r["failed"] for r in runs),
        "other_load_cores": statistics.median(r["other_load_cores"] for r in runs),
    }


def run(args: argparse.Namespace) -> int:
    console = Console()
    kinds = database_kinds(args.db)
    out = report.ResultsDirectory(NAME, args.results)
    info = machine.describe(args.postgres_url if "postgresql" in kinds else None)
    console.print(f"[bold]Engine overhead[/bold] on {machine.one_line(info)}; results in {out.path}/")
    cells: list[dict[str, Any]] = []
    for kind, executors, concurrency in itertools.product(kinds, args.executors, args.concurrency):
        shape = ClusterShape(executors, concurrency, simulator_args=("--latency", "fixed:0"))
        runs = []
        for repeat in range(args.repeats):
            name = f"{kind}-{executors}x{concurrency}-{repeat + 1}"
            with fresh_database(kind, out.workdir(name), args.postgres_url) as database:
                outcome = run_on_cluster(
                    database,
                    out.workdir(name),
                    shape,
                    args.workflows,
                    console,
                    label=name,
                    time_limit=900,
                    profile=args.profile,
                )
            runs.append(measure(outcome))
        cell = {"database": kind, "executors": executors, "concurrency": concurrency, **median_of(runs)}
        cell["each_run"] = runs
        cells.append(cell)
        console.print(
            f"  {kind} {executors}x{concurrency}: {cell['steps_per_second']:,.0f} steps/s "
            f"(runs {cell['steps_per_second_min']:,.0f}-{cell['steps_per_second_max']:,.0f}), "
            f"coordinator {cell['coordinator_cpu_per_1000_steps']:.2f} CPU-s/1k steps"
        )
    headers = [
        "database",
        "executors x slots",
        "steps/s (median)",
        "min-max",
        "coord. CPU-s / 1k steps",
        "executors CPU-s / 1k steps",
        "coord. peak RSS MiB",
        "executor peak RSS MiB",
        "result → next enqueued p50 / p99 ms",
        "result → next started p50 / p99 ms",
        "other load (cores)",
        "failed",
    ]
    rows = [
        [
            c["database"],
            f"{c['executors']} x {c['concurrency']}",
            c["steps_per_second"],
            f"{c['steps_per_second_min']:,.0f}-{c['steps_per_second_max']:,.0f}",
            c["coordinator_cpu_per_1000_steps"],
            c["executors_cpu_per_1000_steps"],
            c["coordinator_peak_rss_mib"],
            c["executor_peak_rss_mib"],
            f"{c['enqueue_gap_p50_ms']:.0f} / {c['enqueue_gap_p99_ms']:.0f}",
            f"{c['start_gap_p50_ms']:.0f} / {c['start_gap_p99_ms']:.0f}",
            c["other_load_cores"],
            c["failed"],
        ]
        for c in cells
    ]
    best = {
        kind: max((c["steps_per_second"] for c in cells if c["database"] == kind), default=0.0)
        for kind in kinds
    }
    verdict = "\n".join(
        f"- best median on {kind}: **{rate:,.0f} steps/s**"
        + (f" (bar: >= {TARGET_STEPS_PER_SECOND:,.0f})" if kind == "sqlite" else "")
        for kind, rate in best.items()
    )
    plot = plots.grouped_bars(
        out.plot("overhead"),
        f"Engine overhead: sustained steps/s, {args.workflows:,} workflows, latency 0 "
        f"(median of {args.repeats} runs)",
        [f"{e} x {c}" for e, c in itertools.product(args.executors, args.concurrency)],
        {kind: [c["steps_per_second"] for c in cells if c["database"] == kind] for kind in kinds},
        "workflow steps per second",
        reference=(TARGET_STEPS_PER_SECOND, "bar: 1,000 steps/s"),
    )
    summary = (
        f"{args.workflows:,} four-step workflows per run, simulator latency 0, real anthropic SDK "
        f"(aiohttp transport); {args.repeats} runs per cell, medians shown. *Other load* is the CPU that "
        "processes outside the benchmark (other users of this machine) kept busy during the measured "
        "window, out of the machine's cores.\n\n"
        + report.table(headers, rows)
        + "\n"
        + verdict
        + f"\n\n![overhead]({plot.name})\n"
    )
    out.write(info, report.options(args), {"cells": cells, "best": best}, summary)
    console.print(summary)
    return 0 if all(c["failed"] == 0 for c in cells) else 1
