"""Agent loop: long workflows of sequential LLM turns over a growing conversation.

Each workflow (:mod:`bench.agent`) makes ``turns`` LLM calls one after another, each
sending the whole conversation so far, and a tool call (a ``ctx.task`` step) every
``--tool-every`` turns; zero-latency simulator, real ``anthropic`` SDK. One cluster
per length (10, 100, 1,000 and 5,000 turns by default), so each length's CPU is its own.

Per length: coordinator (and executors') CPU-seconds per 1,000 steps over the whole
run; the step transition gap, from a step's result being recorded to the next step
being enqueued (the engine alone: replay and the start-step write) and started on an
executor, as p50/p99 over the first and over the last 10% of each workflow's steps,
and their ratio (target: last / first <= 1.2 at every length, i.e. constant cost per
step); and the journal's stored bytes per workflow (every step's arguments and result)
against the final conversation's size (target: within 3x). Then, separately, the
coordinator's RSS with ``--in-flight`` long loops in flight at once for a while.

Hook for the workflow cache (issue 12; built elsewhere): ``--coordinator-args`` is
passed to every coordinator this scenario starts, so the same run can be repeated with
``--coordinator-args "--workflow-cache-size 0"`` (cache off) and compared; the option is
recorded in results.json.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from ..agent import NAME as WORKFLOW_NAME
from ..agent import agent_args, steps_of
from ..harness import machine, plots, report, timings
from ..harness.databases import fresh_database
from ..harness.journal import stored_workflows
from ..harness.options import add_common_arguments, database_kinds, int_list
from ..harness.workload import ClusterShape, RunOutcome, Workload, run_on_cluster
from .cold_restart import run_cold_restart

NAME = "agent-loop"
MiB = 2**20
#: The bars from issue 12.
TARGET_GAP_RATIO = 1.2
TARGET_JOURNAL_RATIO = 3.0

#: ``--quick``: under 5 minutes on today's code (2 shared cores), SQLite only.
QUICK = {
    "lengths": [10, 100, 1000],
    "workflows": [10, 4, 1],
    "in_flight": 1000,
    "in_flight_seconds": 10.0,
    "db": "sqlite",
    "time_limit": 60.0,
}
FULL = {
    "lengths": [10, 100, 1000, 5000],
    "workflows": [100, 20, 4, 2],
    "in_flight": 10_000,
    "in_flight_seconds": 60.0,
    "db": "sqlite,postgresql",
    "time_limit": 3600.0,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small preset: lengths 10,100,1000 with 10,4,1 workflows (60 s a length at most), "
        "1,000 in flight for 10 s, SQLite; under 5 minutes; explicit options still win",
    )
    parser.add_argument("--lengths", type=int_list, help="turns per workflow, a run each (10,100,1000,5000)")
    parser.add_argument(
        "--workflows", type=int_list, help="workflows per length, one number or one per length (100,20,4,2)"
    )
    parser.add_argument("--tool-every", type=int, default=5, help="a tool call every N turns (default 5)")
    parser.add_argument("--executors", type=int, default=1, help="executors (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=100, help="slots per executor (default 100)")
    parser.add_argument(
        "--in-flight", type=int, help="workflows in flight at once for the RSS measurement (10,000; 0 skips)"
    )
    parser.add_argument("--in-flight-turns", type=int, default=1000, help="their length (default 1000)")
    parser.add_argument("--in-flight-seconds", type=float, help="how long they run before the stop (60)")
    parser.add_argument(
        "--coordinator-args",
        default="",
        help='extra flags for every coordinator, e.g. "--workflow-cache-size 0" (the cache on/off hook)',
    )
    parser.add_argument(
        "--cold-restart",
        type=int,
        default=0,
        help="also measure a cold restart with this many long loops in flight (0 skips; e.g. 500)",
    )
    parser.add_argument(
        "--cold-restart-depth", type=int, default=50, help="turns each loop reaches before the restart (50)"
    )
    parser.add_argument(
        "--cold-restart-turns", type=int, default=10_000, help="their length, longer than the run (10000)"
    )
    parser.add_argument(
        "--cold-restart-only", action="store_true", help="skip the lengths and the in-flight run"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        help="seconds per length before stopping it and measuring what was done (3600; --quick: 75)",
    )
    add_common_arguments(parser, default_db="")


def resolve(args: argparse.Namespace) -> None:
    """Fill the options left unset from the preset (``--quick`` or the full run)."""
    preset = QUICK if args.quick else FULL
    args.lengths = args.lengths or list(preset["lengths"])  # type: ignore[call-overload]
    workflows = args.workflows or list(preset["workflows"])  # type: ignore[call-overload]
    if len(workflows) == 1:
        workflows = workflows * len(args.lengths)
    if len(workflows) != len(args.lengths):
        raise SystemExit("--workflows takes one number or one per length")
    args.workflows = workflows
    args.in_flight = preset["in_flight"] if args.in_flight is None else args.in_flight
    args.in_flight_seconds = args.in_flight_seconds or preset["in_flight_seconds"]
    args.db = args.db or preset["db"]
    args.time_limit = args.time_limit or preset["time_limit"]


@dataclass(frozen=True)
class PositionGaps:
    """Transition gaps (s) of the steps in the first and the last 10% of their workflows."""

    first_enqueue: list[float]
    last_enqueue: list[float]
    first_start: list[float]
    last_start: list[float]
    #: Per step index (1 = the second step): every workflow's gap to enqueue there.
    by_index: dict[int, list[float]]


def position_gaps(run: timings.RunTimings) -> PositionGaps:
    """Each step's gap after its predecessor's result, split by where it sits in its workflow."""
    gaps = PositionGaps([], [], [], [], {})
    for journal in run.steps:
        count = len(journal)
        tenth = max(1, math.ceil(0.1 * count))
        for index in range(1, count):
            done = journal[index - 1].completed_at
            step = journal[index]
            if done is None:
                continue
            enqueue = step.enqueued_at - done
            start = None if step.started_at is None else step.started_at - done
            gaps.by_index.setdefault(index, []).append(enqueue)
            if index <= tenth:
                gaps.first_enqueue.append(enqueue)
                if start is not None:
                    gaps.first_start.append(start)
            if index >= count - tenth:
                gaps.last_enqueue.append(enqueue)
                if start is not None:
                    gaps.last_start.append(start)
    return gaps


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {key: value * 1000 for key, value in timings.summary(values).items()}


def _ratio(last: float, first: float) -> float:
    return last / first if first > 0 else math.nan


def measure_length(
    outcome: RunOutcome, turns: int, tool_every: int, stored: dict[str, Any]
) -> dict[str, Any]:
    run = outcome.timings
    done = [w.completed_at for w in run.workflows if w.completed_at is not None]
    steps_done = sum(1 for journal in run.steps for step in journal if step.completed_at is not None)
    end = (
        max(done)
        if done
        else max(
            (s.completed_at for journal in run.steps for s in journal if s.completed_at is not None),
            default=0.0,
        )
    )
    coordinator_cpu = outcome.cpu_seconds(["coordinator"], 0.0, end)
    executor_cpu = outcome.cpu_seconds(outcome.executor_names, 0.0, end)
    gaps = position_gaps(run)
    enqueue_first, enqueue_last = _ms(gaps.first_enqueue), _ms(gaps.last_enqueue)
    start_first, start_last = _ms(gaps.first_start), _ms(gaps.last_start)
    # An unfinished loop (stopped at the time limit) is measured as far as it got: its
    # conversation is what its latest turn sent.
    journals = [w.journal_bytes for w in stored.values() if w.steps]
    conversations = [
        w.result["conversation_bytes"] if w.status == "completed" and w.result else w.last_step_args_bytes
        for w in stored.values()
        if w.steps
    ]
    journal_mean = statistics.fmean(journals) if journals else math.nan
    conversation_mean = statistics.fmean(conversations) if conversations else math.nan
    return {
        "turns": turns,
        "steps_per_workflow": steps_of(turns, tool_every),
        "workflows": len(run.workflows),
        "completed": sum(1 for w in run.workflows if w.status == "completed"),
        "failed": sum(1 for w in run.workflows if w.status == "failed"),
        "steps_done": steps_done,
        "span_seconds": end,
        "start_seconds": outcome.start_seconds,
        "timed_out": outcome.timed_out,
        "coordinator_cpu_per_1000_steps": 1000 * coordinator_cpu / steps_done if steps_done else math.nan,
        "executors_cpu_per_1000_steps": 1000 * executor_cpu / steps_done if steps_done else math.nan,
        "coordinator_peak_rss_mib": outcome.sampler.peak_rss(["coordinator"]) / MiB,
        "gap_to_enqueue_ms": {"first_10pct": enqueue_first, "last_10pct": enqueue_last},
        "gap_to_start_ms": {"first_10pct": start_first, "last_10pct": start_last},
        "enqueue_gap_ratio_p50": _ratio(enqueue_last["p50"], enqueue_first["p50"]),
        "enqueue_gap_ratio_p99": _ratio(enqueue_last["p99"], enqueue_first["p99"]),
        "start_gap_ratio_p50": _ratio(start_last["p50"], start_first["p50"]),
        "start_gap_ratio_p99": _ratio(start_last["p99"], start_first["p99"]),
        "gap_by_step_ms": {
            str(index): statistics.median(values) * 1000 for index, values in sorted(gaps.by_index.items())
        },
        "journal_bytes_per_workflow": journal_mean,
        "conversation_bytes_per_workflow": conversation_mean,
        "journal_to_conversation": journal_mean / conversation_mean if conversation_mean else math.nan,
        "other_load_cores": outcome.other_load(0.0, end) if end > 0 else math.nan,
        "duplicate_calls": outcome.simulator_stats.get("duplicate_successes", 0),
    }


def _shape(args: argparse.Namespace) -> ClusterShape:
    return ClusterShape(
        args.executors,
        args.concurrency,
        coordinator_args=("--workflows", "bench.agent", *shlex.split(args.coordinator_args)),
        executor_args=("--handlers", "bench.agent"),
    )


def _workload(turns: int, tool_every: int) -> Workload:
    return Workload(
        WORKFLOW_NAME, lambda index: agent_args(index, turns, tool_every), steps_of(turns, tool_every)
    )


def run_length(
    args: argparse.Namespace,
    kind: str,
    turns: int,
    count: int,
    out: report.ResultsDirectory,
    console: Console,
) -> dict[str, Any]:
    name = f"{kind}-{turns}-turns"
    with fresh_database(kind, out.workdir(name), args.postgres_url) as database:
        outcome = run_on_cluster(
            database,
            out.workdir(name),
            _shape(args),
            count,
            console,
            label=name,
            time_limit=args.time_limit,
            workload=_workload(turns, args.tool_every),
        )
        stored = stored_workflows(database.url, WORKFLOW_NAME, last_step_name="turn")
    return measure_length(outcome, turns, args.tool_every, stored)


def run_in_flight(
    args: argparse.Namespace, kind: str, out: report.ResultsDirectory, console: Console
) -> dict[str, Any]:
    """``--in-flight`` long loops started at once, run for ``--in-flight-seconds``, then stopped."""
    name = f"{kind}-in-flight-{args.in_flight}"
    with fresh_database(kind, out.workdir(name), args.postgres_url) as database:
        outcome = run_on_cluster(
            database,
            out.workdir(name),
            _shape(args),
            args.in_flight,
            console,
            label=name,
            stop_when=lambda elapsed, _stats: elapsed >= args.in_flight_seconds,
            workload=_workload(args.in_flight_turns, args.tool_every),
        )
    series = outcome.sampler.series["coordinator"]
    steps_done = sum(
        1 for journal in outcome.timings.steps for step in journal if step.completed_at is not None
    )
    return {
        "workflows": args.in_flight,
        "turns": args.in_flight_turns,
        "seconds": args.in_flight_seconds,
        "start_seconds": outcome.start_seconds,
        "steps_done": steps_done,
        "steps_per_workflow_reached": steps_done / args.in_flight if args.in_flight else math.nan,
        "coordinator_rss_at_start_mib": (series.rss_bytes[0] if series.rss_bytes else 0) / MiB,
        "coordinator_peak_rss_mib": series.peak_rss() / MiB,
        "coordinator_rss_at_end_mib": (series.rss_bytes[-1] if series.rss_bytes else 0) / MiB,
        "rss_series_mib": [
            (round(t - series.times[0], 2), rss / MiB)
            for t, rss in zip(series.times, series.rss_bytes, strict=True)
        ],
        "other_load_cores": outcome.other_load(0.0, args.in_flight_seconds),
    }


def run(args: argparse.Namespace) -> int:
    resolve(args)
    console = Console()
    kinds = database_kinds(args.db)
    out = report.ResultsDirectory(NAME, args.results)
    info = machine.describe(args.postgres_url if "postgresql" in kinds else None)
    console.print(
        f"[bold]Agent loop[/bold]: lengths {', '.join(map(str, args.lengths))} turns "
        f"({', '.join(map(str, args.workflows))} workflows), a tool every {args.tool_every} turns, "
        f"latency 0, on {machine.one_line(info)}; results in {out.path}/"
    )
    lengths: dict[str, list[dict[str, Any]]] = {}
    in_flight: dict[str, dict[str, Any]] = {}
    cold: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        lengths[kind] = []
        if args.cold_restart > 0:
            cold[kind] = run_cold_restart(args, kind, out.workdir(f"{kind}-cold-restart"), console)
            console.print(
                f"  {kind} cold restart of {args.cold_restart:,} loops: all moved "
                f"{cold[kind]['all_moved_after_kill_s']:.1f}s after the kill"
            )
        if args.cold_restart_only:
            continue
        for turns, count in zip(args.lengths, args.workflows, strict=True):
            result = run_length(args, kind, turns, count, out, console)
            lengths[kind].append(result)
            console.print(
                f"  {kind} {turns} turns: coordinator "
                f"{result['coordinator_cpu_per_1000_steps']:.2f} CPU-s/1k steps, "
                f"gap to enqueue p50 {result['gap_to_enqueue_ms']['first_10pct']['p50']:.1f} -> "
                f"{result['gap_to_enqueue_ms']['last_10pct']['p50']:.1f} ms "
                f"(x{result['enqueue_gap_ratio_p50']:.2f}), journal "
                f"{result['journal_to_conversation']:.1f}x the conversation"
            )
        if args.in_flight > 0 and not args.cold_restart_only:
            in_flight[kind] = run_in_flight(args, kind, out, console)
            console.print(
                f"  {kind} {args.in_flight:,} in flight: coordinator peak RSS "
                f"{in_flight[kind]['coordinator_peak_rss_mib']:.0f} MiB"
            )
    summary = ("" if args.cold_restart_only else _summary(args, kinds, lengths, in_flight, out)) + (
        _cold_summary(args, cold)
    )
    out.write(
        info,
        report.options(args),
        {"lengths": lengths, "in_flight": in_flight, "cold_restart": cold},
        summary,
    )
    print(summary)  # plain: Markdown's [brackets] are not console markup
    # A length stopped at --time-limit is measured as far as it got (today's code cannot finish
    # 1,000 turns within --quick's budget); only failed workflows fail the scenario.
    ok = all(r["failed"] == 0 for rows in lengths.values() for r in rows)
    return 0 if ok else 1


def _cold_summary(args: argparse.Namespace, cold: dict[str, dict[str, Any]]) -> str:
    if not cold:
        return ""
    return "\n" + report.table(
        [
            "database",
            "loops",
            "journal steps each at the kill (mean, min-max)",
            "new coordinator listening s",
            "next step enqueued, s after the kill p50 / p99 / all",
            "s after listening p50 / p99 / all",
            "new coordinator CPU-s",
            "its RSS MiB",
        ],
        [
            [
                kind,
                r["workflows"],
                f"{r['depth_steps_mean']:.0f} ({r['depth_steps_min']}-{r['depth_steps_max']})",
                r["coordinator_listening_seconds"],
                "{p50:.1f} / {p99:.1f} / {max:.1f}".format(**r["moved_after_kill_s"]),
                "{p50:.1f} / {p99:.1f} / {max:.1f}".format(**r["moved_after_listening_s"]),
                r["new_coordinator_cpu_seconds"],
                r["new_coordinator_rss_mib"],
            ]
            for kind, r in cold.items()
        ],
    )


def _pair(values: dict[str, float]) -> str:
    return f"{values['p50']:.1f} / {values['p99']:.1f}"


def _summary(
    args: argparse.Namespace,
    kinds: list[str],
    lengths: dict[str, list[dict[str, Any]]],
    in_flight: dict[str, dict[str, Any]],
    out: report.ResultsDirectory,
) -> str:
    headers = [
        "database",
        "turns (steps)",
        "completed",
        "coord. CPU-s / 1k steps",
        "executors CPU-s / 1k steps",
        "→ enqueued p50 / p99 ms, first 10%",
        "last 10%",
        "ratio p50 (p99)",
        "→ started p50 / p99 ms, first 10%",
        "last 10%",
        "ratio p50 (p99)",
        "journal KiB / wf",
        "conversation KiB",
        "journal / conv.",
        "other load (cores)",
    ]
    rows = [
        [
            kind,
            f"{r['turns']:,} ({r['steps_per_workflow']:,})",
            f"{r['completed']} / {r['workflows']}"
            + (
                f" (stopped at {r['span_seconds']:.0f} s, {r['steps_done']:,} steps done)"
                if r["timed_out"]
                else ""
            ),
            r["coordinator_cpu_per_1000_steps"],
            r["executors_cpu_per_1000_steps"],
            _pair(r["gap_to_enqueue_ms"]["first_10pct"]),
            _pair(r["gap_to_enqueue_ms"]["last_10pct"]),
            f"{r['enqueue_gap_ratio_p50']:.2f} ({r['enqueue_gap_ratio_p99']:.2f})",
            _pair(r["gap_to_start_ms"]["first_10pct"]),
            _pair(r["gap_to_start_ms"]["last_10pct"]),
            f"{r['start_gap_ratio_p50']:.2f} ({r['start_gap_ratio_p99']:.2f})",
            r["journal_bytes_per_workflow"] / 1024,
            r["conversation_bytes_per_workflow"] / 1024,
            r["journal_to_conversation"],
            r["other_load_cores"],
        ]
        for kind in kinds
        for r in lengths[kind]
    ]
    verdicts = []
    for kind in kinds:
        for r in lengths[kind]:
            gap_ok = r["enqueue_gap_ratio_p50"] <= TARGET_GAP_RATIO
            journal_ok = r["journal_to_conversation"] <= TARGET_JOURNAL_RATIO
            verdicts.append(
                f"- {kind}, {r['turns']:,} turns: last/first gap **{r['enqueue_gap_ratio_p50']:.2f}x** "
                f"({'met' if gap_ok else 'missed'}, bar <= {TARGET_GAP_RATIO}); journal "
                f"**{r['journal_to_conversation']:.1f}x** the conversation "
                f"({'met' if journal_ok else 'missed'}, bar <= {TARGET_JOURNAL_RATIO:.0f})"
            )
    gap_plots = []
    for kind in kinds:
        plot = plots.lines(
            out.plot(f"agent-loop-gaps-{kind}"),
            f"Agent loop on {kind}: result recorded → next step enqueued (median over workflows)",
            {
                f"{r['turns']:,} turns": _binned(
                    [(int(index), gap) for index, gap in r["gap_by_step_ms"].items()]
                )
                for r in lengths[kind]
            },
            xlabel="step index in the workflow",
            ylabel="transition gap (ms)",
            log_x=True,
        )
        gap_plots.append(f"![gaps on {kind}]({plot.name})")
    text = (
        f"Workflows of {', '.join(f'{t:,}' for t in args.lengths)} sequential LLM turns "
        f"({', '.join(map(str, args.workflows))} workflows each, all started at once), a tool call "
        f"every {args.tool_every} turns, the whole conversation sent each turn; simulator latency 0; "
        f"{args.executors} executor(s) x {args.concurrency} slots"
        + (f"; coordinator flags `{args.coordinator_args}`" if args.coordinator_args else "")
        + ". CPU per 1,000 steps is over the whole run of each length. Gaps: from a step's result "
        "being recorded to the next step being enqueued (engine alone) or started on an executor, over "
        "the first and the last 10% of each workflow's steps (of the steps done, for a length stopped at "
        "its time limit).\n\n"
        + report.table(headers, rows)
        + "\n"
        + "\n".join(verdicts)
        + "\n\n"
        + "\n\n".join(gap_plots)
        + "\n"
    )
    if in_flight:
        text += "\n" + report.table(
            [
                "database",
                "workflows in flight",
                "turns each",
                "seconds",
                "steps done",
                "coord. RSS at start MiB",
                "peak MiB",
                "at end MiB",
                "other load (cores)",
            ],
            [
                [
                    kind,
                    r["workflows"],
                    r["turns"],
                    r["seconds"],
                    r["steps_done"],
                    r["coordinator_rss_at_start_mib"],
                    r["coordinator_peak_rss_mib"],
                    r["coordinator_rss_at_end_mib"],
                    r["other_load_cores"],
                ]
                for kind, r in in_flight.items()
            ],
        )
    return text


def _binned(points: list[tuple[int, float]], bins: int = 120) -> list[tuple[float, float]]:
    """At most ``bins`` points, each the median of a run of step indexes (long loops stay readable)."""
    points.sort()
    if len(points) <= bins:
        return [(float(x), y) for x, y in points]
    size = len(points) / bins
    binned = []
    for b in range(bins):
        chunk = points[round(b * size) : round((b + 1) * size)]
        if chunk:
            binned.append((statistics.median(x for x, _ in chunk), statistics.median(y for _, y in chunk)))
    return binned
