"""Rate-limit ceiling: how close to a provider's rate limit do the executors run?

The simulator enforces the published top-tier Claude Haiku limits (4,000 requests,
4,000,000 input tokens and 800,000 output tokens per minute, as continuously
refilling buckets that start full) and answers 429 with ``retry-after`` beyond
them. Several executors share that limit, as they would share an organisation's.
The run is measured over a window after the full bucket has been spent (the
warm-up), from the simulator's own counters:

* sustained accepted requests/s as a fraction of the limit;
* the share of requests answered 429, and the wasted calls (429s, 5xx, duplicates).

It runs with the executors' rate-limit pacing on (the default) and, for
comparison, off (``--no-pacing``: executors only back off after a 429).
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

from rich.console import Console

from ..harness import machine, plots, report
from ..harness.databases import fresh_database
from ..harness.options import add_common_arguments, database_kinds
from ..harness.workload import ClusterShape, RunOutcome, run_on_cluster

NAME = "ratelimit"
#: The published top-tier Claude Haiku limits, per minute.
RPM, ITPM, OTPM = 4000, 4_000_000, 800_000
#: Bars from the brief: >= 95% of the limit sustained, < 1% of requests answered 429.
SUSTAINED_BAR = 0.95
REJECTED_BAR = 0.01


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--executors", type=int, default=4, help="executor processes (default %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=100, help="slots per executor (default %(default)s)"
    )
    parser.add_argument(
        "--latency", default="uniform:0.5,1.5", help="simulated LLM latency (default %(default)s seconds)"
    )
    parser.add_argument("--duration", type=float, default=150.0, help="seconds per run (default %(default)s)")
    parser.add_argument(
        "--warmup", type=float, default=45.0, help="seconds before the measured window (default %(default)s)"
    )
    parser.add_argument("--rpm", type=int, default=RPM, help="requests per minute (default %(default)s)")
    parser.add_argument(
        "--itpm", type=int, default=ITPM, help="input tokens per minute (default %(default)s)"
    )
    parser.add_argument(
        "--otpm", type=int, default=OTPM, help="output tokens per minute (default %(default)s)"
    )
    parser.add_argument(
        "--pacing", default="on,off", help="pacing settings to run: on and/or off (default %(default)s)"
    )
    add_common_arguments(parser, default_db="sqlite")


def measure(outcome: RunOutcome, warmup: float, rpm: int) -> dict[str, Any]:
    series = outcome.simulator_series
    window = [(t, stats) for t, stats in series if t >= warmup]
    first, last = window[0], window[-1]
    seconds = last[0] - first[0]

    def delta(key: str) -> float:
        return float(last[1][key] - first[1][key])

    final = series[-1][1]
    wasted = (
        final["rate_limited"] + final["overloaded"] + final["server_errors"] + final["duplicate_successes"]
    )
    accepted_per_second = delta("successes") / seconds
    return {
        "window_seconds": seconds,
        "accepted_per_second": accepted_per_second,
        "limit_per_second": rpm / 60,
        "fraction_of_limit": accepted_per_second / (rpm / 60),
        "input_tokens_per_minute": delta("input_tokens") / seconds * 60,
        "output_tokens_per_minute": delta("output_tokens") / seconds * 60,
        "requests_total": final["requests"],
        "rate_limited_total": final["rate_limited"],
        "rate_limited_share": final["rate_limited"] / final["requests"] if final["requests"] else 0.0,
        "rate_limited_share_in_window": delta("rate_limited") / delta("requests")
        if delta("requests")
        else 0.0,
        "wasted_calls": wasted,
        "duplicate_successes": final["duplicate_successes"],
        "per_second": _rates(series),
        "workflows_completed": sum(1 for w in outcome.timings.workflows if w.status == "completed"),
    }


def _rates(series: list[tuple[float, dict[str, Any]]]) -> list[tuple[float, float, float]]:
    """(time, accepted/s, 429/s) between consecutive samples."""
    rates = []
    for (t0, a), (t1, b) in itertools.pairwise(series):
        if t1 > t0:
            rates.append(
                (
                    t1,
                    (b["successes"] - a["successes"]) / (t1 - t0),
                    (b["rate_limited"] - a["rate_limited"]) / (t1 - t0),
                )
            )
    return rates


def run(args: argparse.Namespace) -> int:
    console = Console()
    [kind] = database_kinds(args.db)[:1]
    settings = [setting.strip() for setting in args.pacing.split(",") if setting.strip()]
    out = report.ResultsDirectory(NAME, args.results)
    info = machine.describe(args.postgres_url if kind == "postgresql" else None)
    console.print(
        f"[bold]Rate-limit ceiling[/bold]: {args.rpm:,} RPM / {args.itpm:,} ITPM / {args.otpm:,} OTPM, "
        f"{args.executors} executors x {args.concurrency}, latency {args.latency}; results in {out.path}/"
    )
    # Enough workflows that the executors never run out of work within the duration.
    workflows = int((args.rpm + args.rpm / 60 * args.duration) / 4 * 1.5)
    results: dict[str, dict[str, Any]] = {}
    for setting in settings:
        shape = ClusterShape(
            args.executors,
            args.concurrency,
            simulator_args=(
                "--latency",
                args.latency,
                "--rpm",
                str(args.rpm),
                "--itpm",
                str(args.itpm),
                "--otpm",
                str(args.otpm),
                "--seed",
                "1",
            ),
            executor_args=("--no-pacing",) if setting == "off" else (),
        )
        name = f"{kind}-pacing-{setting}"
        with fresh_database(kind, out.workdir(name), args.postgres_url) as database:
            outcome = run_on_cluster(
                database,
                out.workdir(name),
                shape,
                workflows,
                console,
                label=name,
                stop_when=lambda elapsed, _stats: elapsed >= args.duration,
            )
        results[setting] = measure(outcome, args.warmup, args.rpm)
    rows = []
    labels = {
        "fraction_of_limit": "sustained accepted requests / limit",
        "accepted_per_second": "sustained accepted requests/s",
        "rate_limited_share": "share of requests answered 429 (whole run)",
        "rate_limited_share_in_window": "share answered 429 (measured window)",
        "wasted_calls": "wasted calls (429 + 5xx + duplicates)",
        "input_tokens_per_minute": "input tokens/min (window)",
        "output_tokens_per_minute": "output tokens/min (window)",
        "requests_total": "requests sent",
    }
    shares = {"fraction_of_limit", "rate_limited_share", "rate_limited_share_in_window"}
    for key, label in labels.items():
        rows.append(
            [label, *(f"{results[s][key]:.2%}" if key in shares else results[s][key] for s in settings)]
        )
    plot = plots.timelines(
        out.plot("ratelimit"),
        f"Accepted requests/s, {args.rpm:,} RPM limit, {args.executors} executors x {args.concurrency}",
        {f"accepted/s, pacing {s}": [(t, a) for t, a, _ in results[s]["per_second"]] for s in settings},
        "requests per second",
        reference=(args.rpm / 60, f"limit: {args.rpm / 60:.1f}/s"),
        second={f"429/s, pacing {s}": [(t, r) for t, _, r in results[s]["per_second"]] for s in settings},
        second_label="429 answers per second",
    )
    summary = (
        f"Simulator limits {args.rpm:,} requests, {args.itpm:,} input tokens and {args.otpm:,} output "
        f"tokens per minute (buckets start full); latency {args.latency} s; {args.executors} executors x "
        f"{args.concurrency} slots; {args.duration:.0f} s per run, measured after a "
        f"{args.warmup:.0f} s warm-up; one run per setting.\n\n"
        + report.table(["", *(f"pacing {s}" for s in settings)], rows)
    )
    if "on" in results:
        paced = results["on"]
        summary += (
            f"\nBars (pacing on): {paced['fraction_of_limit']:.1%} of the limit sustained (bar: >= "
            f"{SUSTAINED_BAR:.0%}); {paced['rate_limited_share']:.2%} of requests answered 429 (bar: < "
            f"{REJECTED_BAR:.0%}).\n"
        )
    summary += f"\n![rate limit]({plot.name})\n"
    out.write(info, report.options(args), results, summary)
    print(summary)
    return 0
