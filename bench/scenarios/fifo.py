"""FIFO at 20k: do the oldest workflows finish first, and how close to the slot bound?

20,000 four-step workflows (extract -> two analyses in parallel -> summarize) at
8-12 s uniform simulated latency, 100 shards, 5,000 slots in total (10 executors x
500), all started as fast as the coordinator accepts them. Run twice in the same
session: with the FIFO claim order (the default) and with the pre-FIFO baseline
(``--claim-order task-id``: oldest task first), then printed side by side.

Reported per run: the span (first start -> last finish); completion time per
start-order decile (median, p90); workflow duration p50/p90/p99; queue wait vs
execution per step; Kendall's tau-b between start order and completion order (1 =
finished exactly in start order); and the slot-bound minimum span (all execution
seconds packed into the slots, or the latest start + critical path of the three
waves, whichever is larger), next to the ideal span in the same claim order (the
measured step durations replayed through a zero-overhead scheduler with the same
slots): the gap between the two bounds is the cost of the order itself, the gap
between the ideal and the measured span the cost of the engine.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from conveyor.coordinator.model import ClaimOrder

from ..harness import machine, plots, report, timings
from ..harness.databases import fresh_database
from ..harness.options import add_common_arguments, database_kinds
from ..harness.workload import ClusterShape, RunOutcome, run_on_cluster

NAME = "fifo"
#: Bars from the brief: the first decile's median completion under a quarter of the
#: span, and the span within 15% of the slot-bound minimum.
FIRST_DECILE_SHARE_BAR = 0.25
SPAN_OVER_BOUND_BAR = 1.15


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--workflows", type=int, default=20_000, help="workflows per run (default %(default)s)"
    )
    parser.add_argument("--executors", type=int, default=10, help="executor processes (default %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=500, help="slots per executor (default %(default)s)"
    )
    parser.add_argument("--shards", type=int, default=100, help="shards (default %(default)s)")
    parser.add_argument(
        "--latency", default="uniform:8,12", help="simulated LLM latency (default %(default)s seconds)"
    )
    parser.add_argument(
        "--orders",
        default="fifo,task-id",
        help="claim orders to run, in this order: fifo and/or task-id (default %(default)s)",
    )
    add_common_arguments(parser, default_db="sqlite")


def measure(outcome: RunOutcome, slots: int, order: ClaimOrder) -> dict[str, Any]:
    run = outcome.timings
    done = [w.completed_at for w in run.workflows if w.completed_at is not None]
    span = max(done, default=float("nan"))
    table = timings.deciles(run)
    bound = timings.slot_bound(run, slots)
    durations = [w.completed_at - w.created_at for w in run.workflows if w.completed_at is not None]
    gaps = timings.transition_gaps(run)
    ideal = timings.ideal_span(run, slots, fifo=order is ClaimOrder.FIFO)
    return {
        "workflows": len(run.workflows),
        "completed": sum(1 for w in run.workflows if w.status == "completed"),
        "not_completed": sum(1 for w in run.workflows if w.status != "completed"),
        "start_seconds": outcome.start_seconds,
        "span_seconds": span,
        "deciles": table,
        "first_decile_median_share_of_span": table[0]["completion_median"] / span if table else float("nan"),
        "last_decile_median_seconds": table[-1]["completion_median"] if table else float("nan"),
        "duration_seconds": timings.summary(durations),
        "steps": timings.step_phases(run),
        "kendall_tau_b": timings.kendall_tau_b(
            [w.created_at for w in run.workflows], [w.completed_at or span for w in run.workflows]
        ),
        "slot_bound": bound,
        "gap_to_enqueue_seconds": timings.summary(gaps.to_enqueue),
        "gap_to_start_seconds": timings.summary(gaps.to_start),
        "span_over_bound": span / bound["bound"] if bound["bound"] else float("nan"),
        "ideal_span_seconds": ideal,
        "span_over_ideal": span / ideal if ideal else float("nan"),
        "simulator": outcome.simulator_stats,
        "other_load_cores": outcome.other_load(0.0, span),
        "timed_out": outcome.timed_out,
        "exit_codes": outcome.exit_codes,
    }


def run(args: argparse.Namespace) -> int:
    console = Console()
    [kind] = database_kinds(args.db)[:1]
    orders = [ClaimOrder(order.strip()) for order in args.orders.split(",") if order.strip()]
    out = report.ResultsDirectory(NAME, args.results)
    info = machine.describe(args.postgres_url if kind == "postgresql" else None)
    slots = args.executors * args.concurrency
    console.print(
        f"[bold]FIFO at {args.workflows:,}[/bold]: {args.executors} executors x {args.concurrency} slots, "
        f"{args.shards} shards, latency {args.latency}, {kind}; results in {out.path}/"
    )
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, timings.RunTimings] = {}
    for order in orders:
        shape = ClusterShape(
            args.executors,
            args.concurrency,
            simulator_args=("--latency", args.latency),
            coordinator_args=("--shards", str(args.shards), "--claim-order", order.value),
        )
        name = f"{kind}-{order.value}"
        with fresh_database(kind, out.workdir(name), args.postgres_url) as database:
            outcome = run_on_cluster(
                database, out.workdir(name), shape, args.workflows, console, label=name, time_limit=3600
            )
        results[order.value] = measure(outcome, slots, order)
        runs[f"{order.value} order"] = outcome.timings
    summary = _summary(args, results, slots)
    bound = min(r["slot_bound"]["bound"] for r in results.values())
    plot = plots.staircase(
        out.plot("fifo-staircase"),
        f"{args.workflows:,} workflows, {slots:,} slots, latency {args.latency} s: completion by start order",
        runs,
        slot_bound=bound,
    )
    summary += f"\n![staircase]({plot.name})\n"
    out.write(info, report.options(args), results, summary)
    print(summary)
    return 0 if all(r["not_completed"] == 0 and not r["timed_out"] for r in results.values()) else 1


def _summary(args: argparse.Namespace, results: dict[str, dict[str, Any]], slots: int) -> str:
    orders = list(results)
    rows: list[list[Any]] = []

    def row(label: str, pick: Any) -> None:
        rows.append([label, *(pick(results[order]) for order in orders)])

    row("workflows completed", lambda r: f"{r['completed']:,} / {r['workflows']:,}")
    row("time to start all (s)", lambda r: r["start_seconds"])
    row("span (s)", lambda r: r["span_seconds"])
    row("slot-bound minimum (s)", lambda r: r["slot_bound"]["bound"])
    row("span / slot bound", lambda r: r["span_over_bound"])
    row("ideal span in this order (zero-overhead scheduler, s)", lambda r: r["ideal_span_seconds"])
    row("span / ideal span in this order", lambda r: r["span_over_ideal"])
    row("1st decile median completion (s)", lambda r: r["deciles"][0]["completion_median"])
    row("  as a share of the span", lambda r: r["first_decile_median_share_of_span"])
    row("10th decile median completion (s)", lambda r: r["last_decile_median_seconds"])
    row("workflow duration p50 (s)", lambda r: r["duration_seconds"]["p50"])
    row("workflow duration p90 (s)", lambda r: r["duration_seconds"]["p90"])
    row("workflow duration p99 (s)", lambda r: r["duration_seconds"]["p99"])
    row("Kendall tau-b (start vs completion order)", lambda r: r["kendall_tau_b"])
    row("result → next step enqueued p50 / p99 (s)", lambda r: _pair(r["gap_to_enqueue_seconds"]))
    row("result → next step started p50 / p99 (s)", lambda r: _pair(r["gap_to_start_seconds"]))
    row("other load during the run (cores)", lambda r: r["other_load_cores"])
    row(
        "429s / duplicate calls",
        lambda r: f"{r['simulator'].get('rate_limited', 0)} / {r['simulator'].get('duplicate_successes', 0)}",
    )
    text = (
        f"{args.workflows:,} four-step workflows, latency {args.latency} s, {args.shards} shards, "
        f"{args.executors} executors x {args.concurrency} = {slots:,} slots, one run per order.\n\n"
        + report.table(["", *(f"{order} order" for order in orders)], rows)
    )
    decile_rows = [
        [
            d + 1,
            *(
                cell
                for order in orders
                for cell in (
                    results[order]["deciles"][d]["completion_median"],
                    results[order]["deciles"][d]["completion_p90"],
                )
            ),
        ]
        for d in range(min(len(results[order]["deciles"]) for order in orders))
    ]
    text += "\nCompletion time by start-order decile (seconds since the first start):\n\n" + report.table(
        ["decile", *(f"{order} {stat}" for order in orders for stat in ("median", "p90"))], decile_rows
    )
    step_rows = []
    for order in orders:
        for step, phases in results[order]["steps"].items():
            step_rows.append(
                [
                    order,
                    step,
                    phases["queue_wait"]["p50"],
                    phases["queue_wait"]["p90"],
                    phases["execution"]["p50"],
                    phases["execution"]["p90"],
                ]
            )
    text += "\nQueue wait vs execution per step (seconds):\n\n" + report.table(
        ["order", "step", "wait p50", "wait p90", "execution p50", "execution p90"], step_rows
    )
    fifo = results.get(ClaimOrder.FIFO.value)
    if fifo is not None:
        share = fifo["first_decile_median_share_of_span"]
        text += (
            f"\nBars (FIFO order): first decile's median completion {share:.1%} of the span (bar: under "
            f"{FIRST_DECILE_SHARE_BAR:.0%}); span {fifo['span_over_bound']:.3f} x the slot bound "
            f"(bar: at most {SPAN_OVER_BOUND_BAR}).\n"
        )
    return text


def _pair(summary: dict[str, float]) -> str:
    return f"{summary['p50']:.3f} / {summary['p99']:.3f}"
