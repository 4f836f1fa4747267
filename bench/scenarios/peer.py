"""Peer, same run: the same workload on Conveyor and on DBOS Transact, side by side.

Same workflow shape and prompts (:mod:`bench.workflows`), same simulator at latency 0,
same SDK (``anthropic.AsyncAnthropic``, aiohttp transport, SDK retries off), same number
of LLM calls allowed at once, on the same kind of database, one after the other on
this machine. Conveyor runs as a coordinator plus executors (its deployment shape);
DBOS as one process whose queue has that concurrency (its deployment shape). DBOS
queues are polled every 0.1 s instead of the default 1 s, in its favour.

Reported for each: sustained workflow steps/s (between 10% and 90% of workflows
finished), time to start (enqueue) every workflow, total time, CPU-seconds per 1,000
steps of all the engine's processes (not the simulator) and peak RSS; and the ratio.

Celery with the local Redis is not included: Celery has no durable multi-step
workflow with a journal (its canvas chains are fire-and-forget messages), so it would
measure a different, weaker guarantee.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console

from ..cluster import ManagedProcess
from ..harness import machine, plots, report, timings
from ..harness.databases import fresh_database
from ..harness.options import add_common_arguments, database_kinds
from ..harness.sampler import ProcessSampler
from ..harness.workload import STEPS_PER_WORKFLOW, BenchmarkError, ClusterShape, run_on_cluster

NAME = "peer"
MiB = 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--workflows", type=int, default=2000, help="workflows per run (default %(default)s)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="LLM calls at once, for both engines (default %(default)s)",
    )
    parser.add_argument(
        "--executors",
        type=int,
        default=1,
        help="Conveyor executors sharing that concurrency (default %(default)s)",
    )
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    console = Console()
    kinds = database_kinds(args.db)
    out = report.ResultsDirectory(NAME, args.results)
    info = machine.describe(args.postgres_url if "postgresql" in kinds else None)
    console.print(
        f"[bold]Peer comparison[/bold]: {args.workflows:,} workflows, {args.concurrency} calls at once, "
        f"latency 0; results in {out.path}/"
    )
    results: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        conveyor = _run_conveyor(args, kind, out, console)
        dbos = _run_dbos(args, kind, out, console)
        results[kind] = {
            "conveyor": conveyor,
            "dbos": dbos,
            "steps_per_second_ratio": conveyor["steps_per_second"] / dbos["steps_per_second"],
            "total_time_ratio": dbos["total_seconds"] / conveyor["total_seconds"],
        }
    rows = []
    for kind in kinds:
        for engine in ("conveyor", "dbos"):
            r = results[kind][engine]
            rows.append(
                [
                    kind,
                    engine,
                    r["steps_per_second"],
                    r["start_seconds"],
                    r["total_seconds"],
                    r["cpu_per_1000_steps"],
                    r["peak_rss_mib"],
                    f"{r['completed']:,} / {args.workflows:,}",
                    r["other_load_cores"],
                ]
            )
    ratios = "\n".join(
        f"- {kind}: Conveyor sustains **{results[kind]['steps_per_second_ratio']:.1f}x** DBOS's steps/s and "
        f"finishes the whole batch **{results[kind]['total_time_ratio']:.1f}x** sooner"
        for kind in kinds
    )
    plot = plots.grouped_bars(
        out.plot("peer"),
        f"{args.workflows:,} four-step workflows, {args.concurrency} LLM calls at once, latency 0",
        kinds,
        {
            engine: [results[kind][engine]["steps_per_second"] for kind in kinds]
            for engine in ("conveyor", "dbos")
        },
        "sustained workflow steps per second",
    )
    summary = (
        f"{args.workflows:,} four-step workflows per run, latency 0, {args.concurrency} LLM calls at once "
        f"(Conveyor: {args.executors} executor(s) x {args.concurrency // args.executors} slots; DBOS: one "
        f"process, queue worker concurrency {args.concurrency}, polled every 0.1 s); one run each.\n\n"
        + report.table(
            [
                "database",
                "engine",
                "steps/s (sustained)",
                "start all (s)",
                "total (s)",
                "CPU-s / 1k steps",
                "peak RSS MiB",
                "completed",
                "other load (cores)",
            ],
            rows,
        )
        + "\n"
        + ratios
        + f"\n\n![peer]({plot.name})\n"
    )
    out.write(info, report.options(args), results, summary)
    print(summary)
    ok = all(results[k][e]["completed"] == args.workflows for k in kinds for e in ("conveyor", "dbos"))
    return 0 if ok else 1


def _run_conveyor(
    args: argparse.Namespace, kind: str, out: report.ResultsDirectory, console: Console
) -> dict[str, Any]:
    name = f"{kind}-conveyor"
    shape = ClusterShape(args.executors, args.concurrency // args.executors)
    with fresh_database(kind, out.workdir(name), args.postgres_url) as database:
        outcome = run_on_cluster(database, out.workdir(name), shape, args.workflows, console, label=name)
    done = [w.completed_at for w in outcome.timings.workflows if w.completed_at is not None]
    engine = ["coordinator", *outcome.executor_names]
    steps = len(done) * STEPS_PER_WORKFLOW
    total = max(done)
    return {
        "steps_per_second": timings.sustained_rate(done, STEPS_PER_WORKFLOW),
        "start_seconds": outcome.start_seconds,
        "total_seconds": total,
        "cpu_per_1000_steps": 1000 * outcome.cpu_seconds(engine, 0.0, total) / steps,
        "peak_rss_mib": sum(outcome.sampler.series[name].peak_rss() for name in engine) / MiB,
        "completed": sum(1 for w in outcome.timings.workflows if w.status == "completed"),
        "other_load_cores": outcome.other_load(0.0, total),
    }


def _run_dbos(
    args: argparse.Namespace, kind: str, out: report.ResultsDirectory, console: Console
) -> dict[str, Any]:
    workdir = out.workdir(f"{kind}-dbos")
    output = workdir / "timings.json"
    with (
        _simulator(workdir) as simulator,
        _dbos_database(kind, workdir, args.postgres_url) as (url, schema),
    ):
        command = [sys.executable, "-m", "bench.peers.dbos_peer", "--system-db", url, "--schema", schema]
        command += ["--workflows", str(args.workflows), "--concurrency", str(args.concurrency)]
        command += ["--output", str(output)]
        env = {**os.environ, "ANTHROPIC_BASE_URL": simulator.url, "ANTHROPIC_API_KEY": "simulator"}
        console.print(f"{kind}-dbos: running {args.workflows:,} workflows on DBOS Transact...")
        with (workdir / "dbos.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            with ProcessSampler({"dbos": process.pid, "simulator": simulator.pid}) as sampler:
                code = process.wait()
    if code != 0:
        raise BenchmarkError(f"the DBOS peer exited with {code}; see {workdir / 'dbos.log'}")
    data = json.loads(output.read_text())
    origin = data["began"]
    done = [w["completed_at"] - origin for w in data["workflows"] if w["completed_at"] is not None]
    steps = len(done) * STEPS_PER_WORKFLOW
    series = sampler.series["dbos"]
    return {
        "steps_per_second": timings.sustained_rate(done, STEPS_PER_WORKFLOW),
        "start_seconds": data["enqueue_seconds"],
        "total_seconds": max(done),
        "cpu_per_1000_steps": 1000 * (series.cpu_seconds[-1] - series.cpu_seconds[0]) / steps,
        "peak_rss_mib": series.peak_rss() / MiB,
        "completed": data["completed"],
        "other_load_cores": sampler.other_cpu_between(series.times[0], series.times[-1])
        / (series.times[-1] - series.times[0]),
    }


@dataclass(frozen=True)
class _Simulator:
    url: str
    pid: int


@contextlib.contextmanager
def _simulator(workdir: Path) -> Iterator[_Simulator]:
    log_path = workdir / "simulator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conveyor.cli",
                "simulator",
                "--listen",
                "127.0.0.1:0",
                "--latency",
                "fixed:0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    simulator = ManagedProcess("simulator", process, log_path)
    try:
        yield _Simulator("http://" + simulator.wait_for_address(30), process.pid)
    finally:
        simulator.stop(timeout=15)


@contextlib.contextmanager
def _dbos_database(kind: str, workdir: Path, postgres_url: str) -> Iterator[tuple[str, str]]:
    """DBOS's system database: a new SQLite file, or a new schema on the PostgreSQL server."""
    if kind == "sqlite":
        yield f"sqlite:///{(workdir / 'dbos.db').resolve()}", "dbos"
        return
    schema = f"dbos_bench_{uuid.uuid4().hex[:8]}"
    url = sa.engine.make_url(postgres_url).set(drivername="postgresql")
    try:
        yield url.render_as_string(hide_password=False), schema
    finally:
        engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
