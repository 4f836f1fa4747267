"""Database cost per step: what each workflow step asks of the database, on SQLite and PostgreSQL.

The engine-overhead workload (four-step workflows, zero-latency simulator, real SDK),
with the coordinator run under :mod:`bench.harness.statement_probe` and the database
watched by :mod:`bench.harness.dbcost`. Per step (a run's totals over workflows x 4,
so starting a workflow is shared among its steps): write transactions, statements by
verb, rows written, WAL bytes (PostgreSQL: the records that touch the run's schema, read
with ``pg_walinspect``; SQLite: what the coordinator process wrote, WAL and checkpoints),
CPU of the coordinator and of its PostgreSQL backends, and the bytes the finished
workflows keep on disk. These counts do not depend on how busy the machine is, unlike
steps/s; they are the cost model docs/scaling.md projects from.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import sqlalchemy as sa
from rich.console import Console

from ..harness import dbcost, machine, plots, report
from ..harness.databases import RunDatabase, fresh_database
from ..harness.options import add_common_arguments, database_kinds
from ..harness.workload import STEPS_PER_WORKFLOW, ClusterShape, run_on_cluster
from . import overhead

NAME = "dbcost"
#: Seconds to let the coordinator's PostgreSQL backends exit (and flush their table counters).
BACKEND_EXIT_GRACE = 1.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--workflows", type=int, default=3000, help="workflows per run (default %(default)s)")
    parser.add_argument("--executors", type=int, default=2, help="executor processes (default %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=200, help="slots per executor (default %(default)s)"
    )
    add_common_arguments(parser)


def run_one(
    kind: str, database: RunDatabase, out: report.ResultsDirectory, args: argparse.Namespace, console: Console
) -> dict[str, Any]:
    name = f"{kind}-{args.executors}x{args.concurrency}"
    workdir = out.workdir(name)
    counts_path = (workdir / "statement-counts.json").resolve()
    shape = ClusterShape(
        args.executors,
        args.concurrency,
        coordinator_module=dbcost.STATEMENT_PROBE_MODULE,
        env=dbcost.probe_environment(counts_path),
    )
    port = (sa.engine.make_url(database.url).port or 5432) if kind == "postgresql" else None
    io = dbcost.ProcessIoMeter(counts_path, port)
    with dbcost.wal_meter(database) as wal:
        outcome = run_on_cluster(
            database, workdir, shape, args.workflows, console, label=name, time_limit=900, stop_when=io.sample
        )
        time.sleep(BACKEND_EXIT_GRACE)
    tables = dbcost.table_row_changes(database)
    stored = database.size_bytes()
    base = overhead.measure(outcome)
    steps = args.workflows * STEPS_PER_WORKFLOW
    counts = dbcost.read_statement_counts(counts_path)
    writer_statements = {
        k.split(":", 1)[1]: v for k, v in counts["statements"].items() if k.startswith("writer:")
    }
    reader_statements = sum(v for k, v in counts["statements"].items() if k.startswith("reader:"))
    rows_reported = sum(v for k, v in counts["rows"].items() if k.startswith("writer:"))
    backend = io.backend_totals()
    result: dict[str, Any] = {
        "database": kind,
        "workflows": args.workflows,
        "steps": steps,
        "failed": base["failed"],
        "steps_per_second": base["steps_per_second"],
        "other_load_cores": base["other_load_cores"],
        "coordinator_cpu_ms_per_step_window": base["coordinator_cpu_per_1000_steps"],
        "coordinator_cpu_ms_per_step_total": 1000 * io.coordinator.cpu_seconds / steps,
        "write_transactions_per_step": counts["commits"].get("writer", 0) / steps,
        "reader_commits_per_step": counts["commits"].get("reader", 0) / steps,
        "writer_statements_per_step": sum(writer_statements.values()) / steps,
        "writer_statements_by_verb_per_step": {v: n / steps for v, n in sorted(writer_statements.items())},
        "reader_statements_per_step": reader_statements / steps,
        "rows_written_per_step_reported": rows_reported / steps,
        "stored_bytes_per_step": stored / steps,
        "stored_bytes": stored,
        "coordinator_write_bytes_per_step": io.coordinator.write_bytes / steps,
        "coordinator_write_chars_per_step": io.coordinator.write_chars / steps,
        "statement_counts": counts,
    }
    if kind == "postgresql":
        assert wal is not None
        tally = wal.tally
        rows_by_table = {
            table: changes["inserted"] + changes["updated"] + changes["deleted"]
            for table, changes in tables.items()
        }
        result.update(
            {
                "wal_bytes_per_step": tally.record_bytes / steps,
                "wal_fpi_share": tally.fpi_bytes / tally.record_bytes if tally.record_bytes else 0.0,
                "wal_records_per_step": tally.records / steps,
                "wal_commits_per_step": tally.commits / steps,
                "server_wal_bytes_all_users": tally.server_wal_bytes,
                "server_stat_wal_all_users": tally.server_stat_wal,
                "wal_scan_windows": tally.windows,
                "wal_scan_error": wal.error,
                "rows_written_per_step": sum(rows_by_table.values()) / steps,
                "rows_written_per_step_by_table": {t: n / steps for t, n in rows_by_table.items()},
                "table_row_changes": tables,
                "backend_cpu_ms_per_step": 1000 * backend.cpu_seconds / steps,
                "backend_write_bytes_per_step": backend.write_bytes / steps,
                "backends_seen": len(io.backends),
            }
        )
    else:
        # SQLite: the coordinator process itself appends the WAL and checkpoints it into the file.
        result.update(
            {
                "wal_bytes_per_step": io.coordinator.write_chars / steps,
                "rows_written_per_step": rows_reported / steps,
            }
        )
    return result


def run(args: argparse.Namespace) -> int:
    console = Console()
    kinds = database_kinds(args.db)
    out = report.ResultsDirectory(NAME, args.results)
    info = machine.describe(args.postgres_url if "postgresql" in kinds else None)
    console.print(
        f"[bold]Database cost per step[/bold]: {args.workflows:,} workflows, {args.executors} executors x "
        f"{args.concurrency}, latency 0, on {machine.one_line(info)}; results in {out.path}/"
    )
    results: list[dict[str, Any]] = []
    for kind in kinds:
        with fresh_database(kind, out.workdir(kind), args.postgres_url) as database:
            result = run_one(kind, database, out, args, console)
        results.append(result)
        console.print(
            f"  {kind}: {result['write_transactions_per_step']:.3f} write transactions, "
            f"{result['writer_statements_per_step']:.1f} statements, "
            f"{result['rows_written_per_step']:.1f} rows, "
            f"{result['wal_bytes_per_step']:,.0f} WAL bytes, "
            f"{result['coordinator_cpu_ms_per_step_window']:.3f} coordinator CPU-ms per step"
        )
    headers = [
        "database",
        "steps/s",
        "coord. CPU ms / step",
        "PG backend CPU ms / step",
        "write transactions / step",
        "writer statements / step",
        "reader statements / step",
        "rows written / step",
        "WAL bytes / step",
        "WAL full-page share",
        "stored bytes / step",
        "other load (cores)",
        "failed",
    ]
    nan = float("nan")
    rows = [
        [
            r["database"],
            r["steps_per_second"],
            r["coordinator_cpu_ms_per_step_window"],
            r.get("backend_cpu_ms_per_step", nan),
            r["write_transactions_per_step"],
            r["writer_statements_per_step"],
            r["reader_statements_per_step"],
            r["rows_written_per_step"],
            r["wal_bytes_per_step"],
            r.get("wal_fpi_share", nan),
            r["stored_bytes_per_step"],
            r["other_load_cores"],
            r["failed"],
        ]
        for r in results
    ]
    verbs = sorted({verb for r in results for verb in r["writer_statements_by_verb_per_step"]})
    verb_rows = [
        [verb, *(r["writer_statements_by_verb_per_step"].get(verb, 0.0) for r in results)] for verb in verbs
    ]
    table_rows: list[list[Any]] = []
    for r in results:
        for table, per_step in r.get("rows_written_per_step_by_table", {}).items():
            table_rows.append([r["database"], table, per_step])
    plot = plots.grouped_bars(
        out.plot("dbcost"),
        "What one workflow step asks of the database",
        ["write transactions", "writer statements", "rows written", "WAL KiB", "stored KiB"],
        {
            r["database"]: [
                r["write_transactions_per_step"],
                r["writer_statements_per_step"],
                r["rows_written_per_step"],
                r["wal_bytes_per_step"] / 1024,
                r["stored_bytes_per_step"] / 1024,
            ]
            for r in results
        },
        "per workflow step",
    )
    summary = (
        f"{args.workflows:,} four-step workflows per run, latency 0, {args.executors} executors x "
        f"{args.concurrency} slots; every count is the run's total divided by its "
        f"{args.workflows * STEPS_PER_WORKFLOW:,} steps. "
        "Coordinator CPU is measured between 10% and 90% of workflows finished, with the statement "
        "probe installed (a few microseconds per statement more than in `python -m bench overhead`). "
        "WAL bytes: on PostgreSQL the WAL records touching the run's schema and the commit records of "
        "their transactions (pg_walinspect), on SQLite the bytes the coordinator process wrote (WAL "
        "appends and checkpoints). Rows written: PostgreSQL's table counters (triggers included), "
        "SQLite the rows the statements reported.\n\n"
        + report.table(headers, rows)
        + "\nWriter statements per step, by verb:\n\n"
        + report.table(["verb", *(r["database"] for r in results)], verb_rows)
        + (
            "\nRows written per step, by table (PostgreSQL):\n\n"
            + report.table(["database", "table", "rows / step"], table_rows)
            if table_rows
            else ""
        )
        + f"\n![database cost per step]({plot.name})\n"
    )
    out.write(info, report.options(args), {"runs": results}, summary)
    console.print(summary)
    return 0 if all(r["failed"] == 0 for r in results) else 1
