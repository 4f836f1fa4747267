"""Fan-out FIFO: do an old workflow's children go before a newer root's steps?

One ``fanout`` workflow is started first: it makes one LLM call, then fans out
``--children`` one-step child workflows; ``--roots`` newer ``fanout`` roots, each making
the same one LLM call, are started right after it in the same StartWorkflows call. So the
children are enqueued after the newer roots' steps (behind the parent's own call), but
they carry their root's creation time as FIFO key, so with few slots (a queue forms)
they should be served before every newer root's step still queued. Run once per claim
order (``fifo``, the default, and the pre-FIFO ``task-id`` baseline: oldest task first).

Reported per run: the share of the children whose step finished before the first newer
root's step started once the whole fan-out was queued (each child is replayed to enqueue its
step, so that takes a moment; FIFO: all but the children still running then), how many
newer roots' steps started ahead of a queued child (FIFO: none, bar the claims already in
flight), the median step finish of children and of newer roots, when each group was
enqueued, and a plot of both
groups' finished steps over time.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from rich.console import Console

from conveyor.coordinator.model import ClaimOrder

from ..harness import machine, plots, report, timings
from ..harness.databases import fresh_database
from ..harness.options import add_common_arguments, database_kinds
from ..harness.workload import ClusterShape, Workload, run_on_cluster
from ..workflows import FANOUT_STEP

NAME = "fanout"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--children", type=int, default=500, help="children of the first workflow (default %(default)s)"
    )
    parser.add_argument(
        "--roots", type=int, default=500, help="newer root workflows started after it (default %(default)s)"
    )
    parser.add_argument("--executors", type=int, default=1, help="executor processes (default %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=20, help="slots per executor (default %(default)s)"
    )
    parser.add_argument(
        "--latency", default="uniform:0.5,1.5", help="simulated LLM latency (default %(default)s seconds)"
    )
    parser.add_argument(
        "--orders",
        default="fifo,task-id",
        help="claim orders to run, in this order: fifo and/or task-id (default %(default)s)",
    )
    add_common_arguments(parser, default_db="sqlite")


def fanout_workload(children: int) -> Workload:
    """Workflow 0 fans out ``children``; every later one is a one-step newer root."""
    return Workload(
        name="fanout",
        args=lambda index: {"index": index, "children": children if index == 0 else 0},
        steps_per_workflow=1,
    )


def _llm_steps(run: timings.RunTimings, skip_first: bool = False) -> list[timings.StepTiming]:
    """Each workflow's LLM step, times shifted to Unix seconds (the two loads have different zeros)."""
    return [
        timings.StepTiming(
            step.number,
            step.name,
            run.origin + step.enqueued_at,
            None if step.started_at is None else run.origin + step.started_at,
            None if step.completed_at is None else run.origin + step.completed_at,
            step.attempt,
            step.executor_id,
        )
        for journal in run.steps[1 if skip_first else 0 :]
        for step in journal
        if step.name == FANOUT_STEP
    ]


def measure(roots: timings.RunTimings, children: timings.RunTimings, slots: int) -> dict[str, Any]:
    zero = roots.origin  # the parent's start
    child_steps = _llm_steps(children)
    root_steps = _llm_steps(roots, skip_first=True)  # the parent is the first root
    fanned_out = min((s.enqueued_at for s in child_steps), default=float("nan"))
    # Each child is replayed to enqueue its step, so the fan-out reaches the queue over a while;
    # once all of it is there, FIFO should start no newer root's step before the children's.
    queued = max((s.enqueued_at for s in child_steps), default=float("nan"))
    first_root_start = min(
        (s.started_at for s in root_steps if s.started_at is not None and s.started_at >= queued),
        default=float("nan"),
    )
    child_done = sorted(s.completed_at - zero for s in child_steps if s.completed_at is not None)
    root_done = sorted(s.completed_at - zero for s in root_steps if s.completed_at is not None)
    before = sum(1 for s in child_steps if s.completed_at is not None and s.completed_at <= first_root_start)
    # Roots whose step started after the fan-out but before the last child's step started:
    # each one overtook a child that was already queued.
    last_child_start = max((s.started_at for s in child_steps if s.started_at is not None), default=zero)
    overtaking = sum(
        1 for s in root_steps if s.started_at is not None and fanned_out <= s.started_at < last_child_start
    )
    waiting = sum(1 for s in root_steps if s.started_at is None or s.started_at >= fanned_out)
    return {
        "children": len(children.workflows),
        "children_completed": sum(1 for w in children.workflows if w.status == "completed"),
        "newer_roots": len(root_steps),
        "roots_completed": sum(1 for w in roots.workflows if w.status == "completed"),
        "slots": slots,
        "children_enqueued_median_seconds": statistics.median(s.enqueued_at - zero for s in child_steps),
        "roots_enqueued_median_seconds": statistics.median(s.enqueued_at - zero for s in root_steps),
        "children_first_enqueued_seconds": fanned_out - zero,
        "roots_still_queued_at_fan_out": waiting,
        "children_last_enqueued_seconds": queued - zero,
        "first_root_step_started_after_fan_out_seconds": first_root_start - zero,
        "children_finished_before_first_root_started": before,
        "share_of_children_before_first_root": before / len(child_steps) if child_steps else float("nan"),
        "roots_overtaking_a_queued_child": overtaking,
        "children_finish_median_seconds": statistics.median(child_done) if child_done else float("nan"),
        "roots_finish_median_seconds": statistics.median(root_done) if root_done else float("nan"),
        "children_last_finish_seconds": child_done[-1] if child_done else float("nan"),
        "roots_last_finish_seconds": root_done[-1] if root_done else float("nan"),
        "child_finishes": child_done,
        "root_finishes": root_done,
    }


def run(args: argparse.Namespace) -> int:
    console = Console()
    [kind] = database_kinds(args.db)[:1]
    orders = [ClaimOrder(order.strip()) for order in args.orders.split(",") if order.strip()]
    out = report.ResultsDirectory(NAME, args.results)
    info = machine.describe(args.postgres_url if kind == "postgresql" else None)
    slots = args.executors * args.concurrency
    console.print(
        f"[bold]Fan-out FIFO[/bold]: 1 parent x {args.children:,} children, then {args.roots:,} newer roots; "
        f"{args.executors} executors x {args.concurrency} slots, latency {args.latency}, {kind}; "
        f"results in {out.path}/"
    )
    results: dict[str, dict[str, Any]] = {}
    workload = fanout_workload(args.children)
    for order in orders:
        shape = ClusterShape(
            args.executors,
            args.concurrency,
            simulator_args=("--latency", args.latency),
            coordinator_args=("--claim-order", order.value),
        )
        name = f"{kind}-{order.value}"
        with fresh_database(kind, out.workdir(name), args.postgres_url) as database:
            outcome = run_on_cluster(
                database,
                out.workdir(name),
                shape,
                1 + args.roots,
                console,
                label=name,
                time_limit=1800,
                workload=workload,
            )
            children = timings.load(database.url, "fanout_child")
        result = measure(outcome.timings, children, slots)
        span = max(result["children_last_finish_seconds"], result["roots_last_finish_seconds"])
        result["other_load_cores"] = outcome.other_load(0.0, span)
        result["timed_out"] = outcome.timed_out
        results[order.value] = result
    plot = plots.timelines(
        out.plot("fanout"),
        f"1 parent x {args.children:,} children, then {args.roots:,} newer roots, {slots} slots: "
        "steps finished",
        {
            f"{group} ({order})": [(t, n) for n, t in enumerate(results[order][key], start=1)]
            for order in results
            for group, key in (("children", "child_finishes"), ("newer roots", "root_finishes"))
        },
        "steps finished",
    )
    summary = _summary(args, results, slots) + f"\n![fan-out]({plot.name})\n"
    out.write(info, report.options(args), results, summary)
    print(summary)
    complete = all(
        r["children_completed"] == r["children"]
        and r["roots_completed"] == 1 + args.roots
        and not r["timed_out"]
        for r in results.values()
    )
    return 0 if complete else 1


def _summary(args: argparse.Namespace, results: dict[str, dict[str, Any]], slots: int) -> str:
    orders = list(results)
    rows: list[list[Any]] = []

    def row(label: str, key: str) -> None:
        rows.append([label, *(results[order][key] for order in orders)])

    row("children completed", "children_completed")
    row("newer roots completed (+ the parent)", "roots_completed")
    row("children's steps enqueued, median (s)", "children_enqueued_median_seconds")
    row("newer roots' steps enqueued, median (s)", "roots_enqueued_median_seconds")
    row("fan-out: first child's step enqueued (s)", "children_first_enqueued_seconds")
    row("newer roots' steps still queued then", "roots_still_queued_at_fan_out")
    row("fan-out queued: last child's step enqueued (s)", "children_last_enqueued_seconds")
    row(
        "first newer root's step started after that (s)",
        "first_root_step_started_after_fan_out_seconds",
    )
    row("children finished before it", "children_finished_before_first_root_started")
    row("  share of the children", "share_of_children_before_first_root")
    row("newer roots' steps started ahead of a queued child", "roots_overtaking_a_queued_child")
    row("children's steps finished, median (s)", "children_finish_median_seconds")
    row("newer roots' steps finished, median (s)", "roots_finish_median_seconds")
    row("last child finished (s)", "children_last_finish_seconds")
    row("last newer root finished (s)", "roots_last_finish_seconds")
    row("other load during the run (cores)", "other_load_cores")
    return (
        f"1 parent workflow fanning out {args.children:,} one-step children, {args.roots:,} one-step newer "
        f"roots started right after it, latency {args.latency} s, {args.executors} executors x "
        f"{args.concurrency} = {slots} slots; times in seconds since the parent started; one run per "
        "claim order.\n\n" + report.table(["", *(f"{order} order" for order in orders)], rows)
    )
