"""Big database: Diagnose, claims, cancels and counts behind 1M finished workflows and 200k unclaimable tasks.

A database is filled directly (SQL, no coordinator) with ``--finished`` finished
workflows (one completed step each) and, ahead of them in FIFO order, ``--unclaimable``
running workflows whose one task cannot be claimed: a third claimed by a busy executor,
a third waiting out a backoff, a third of a kind nobody serves; then ``--claimable``
workflows with a claimable ``llm`` task. Then, on the store's own code, each operation
is timed ``--repeats`` times (median and worst, in ms):

* ``diagnose``: everything ``Diagnose`` reads (queue depths, the five invariant checks,
  counts by status, tasks per executor), in one read transaction;
* ``claim (...)``: a claim of 10 ``llm`` tasks, for any shard, for all shards held and
  for 5 of 100 shards (each in a transaction rolled back afterwards, so every repeat
  meets the same queue);
* ``cancel``: cancelling one running workflow (rolled back likewise);
* ``count by status`` and ``earliest delayed`` (the retry timer's query).

The bar (issue 9 item 14): Diagnose under a second at 1M finished workflows, on both
databases; claims whose cost does not grow with the unclaimable rows. ``--quick`` runs
10,000 finished and 3,000 unclaimable, to check the harness. PostgreSQL tables are
vacuumed and analyzed after filling, as autovacuum would; SQLite is not analyzed (the
coordinator never runs ANALYZE).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from sqlalchemy.engine import Connection

from conveyor.coordinator.store import Database, TaskQueue
from conveyor.coordinator.store.diagnosis import invariant_violations, shard_depths
from conveyor.coordinator.store.journal import cancel_workflows
from conveyor.coordinator.store.schema import tasks
from conveyor.coordinator.store.workflows import Workflows

from ..harness import machine, report
from ..harness.databases import fresh_database
from ..harness.options import add_common_arguments, database_kinds

NAME = "bigdb"
SHARDS = 100
#: Far in the future: the delayed tasks stay delayed for the whole run.
NOW = 10**15
#: The bar from issue 9 item 14.
DIAGNOSE_BAR_MS = 1000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--finished", type=int, default=1_000_000, help="finished workflows (default %(default)s)"
    )
    parser.add_argument(
        "--unclaimable",
        type=int,
        default=200_000,
        help="unclaimable tasks ahead in FIFO (default %(default)s)",
    )
    parser.add_argument("--claimable", type=int, default=2_000, help="claimable tasks (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="timings per operation (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="10,000 finished, 3,000 unclaimable, 3 repeats")
    add_common_arguments(parser)


def _series(dialect: str, count: int, body: str) -> str:
    """``body`` run over x = 1..count (an INSERT ... SELECT's SELECT part reading ``x``)."""
    if dialect == "postgresql":
        return body.replace("FROM numbers", f"FROM generate_series(1, {count}) AS numbers(x)")
    return (
        f"WITH RECURSIVE numbers(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM numbers WHERE x < {count}) "
        + body
    )


def fill(database: Database, finished: int, unclaimable: int, claimable: int) -> None:
    dialect = database.dialect.name
    text = "CAST(x AS TEXT)" if dialect == "sqlite" else "x::text"
    running = unclaimable + claimable
    # Task sort by FIFO position among the running: the first `unclaimable` cycle through
    # 0 claimed / 1 delayed / 2 of a kind nobody serves; the rest (3) are claimable.
    position = f"(w.created_at - {finished})"
    sort = f"CASE WHEN {position} > {unclaimable} THEN 3 ELSE {position} % 3 END"
    statements = [
        # Finished workflows, oldest; then the running ones, unclaimable in front of the FIFO.
        _series(
            dialect,
            finished,
            "INSERT INTO conveyor_workflows (id, name, status, shard, args, created_at, completed_at, "
            "step_count) "
            f"SELECT 'done-' || {text}, 'research', "
            "CASE x % 20 WHEN 0 THEN 'failed' WHEN 1 THEN 'cancelled' ELSE 'completed' END, "
            f"x % {SHARDS}, '{{}}', x, x + 1, 1 FROM numbers",
        ),
        _series(
            dialect,
            finished,
            "INSERT INTO conveyor_steps (workflow_id, number, kind, name, args, status, result, attempt, "
            f"created_at, completed_at) SELECT 'done-' || {text}, 0, 'llm', 'call', '{{}}', 'completed', "
            "'\"ok\"', 1, x, x + 1 FROM numbers",
        ),
        _series(
            dialect,
            running,
            "INSERT INTO conveyor_workflows (id, name, status, shard, args, created_at, step_count) "
            f"SELECT 'live-' || {text}, 'research', 'running', x % {SHARDS}, '{{}}', {finished} + x, 1 "
            "FROM numbers",
        ),
        _series(
            dialect,
            running,
            "INSERT INTO conveyor_steps (workflow_id, number, kind, name, args, status, attempt, created_at) "
            f"SELECT 'live-' || {text}, 0, 'llm', 'call', '{{}}', 'running', 0, {finished} + x "
            "FROM numbers",
        ),
        "INSERT INTO conveyor_tasks (id, shard, workflow_created_at, workflow_id, kind, attempt, "
        "max_attempts, "
        "initial_backoff, backoff_multiplier, max_backoff, rate_limit_waits, max_rate_limit_waits, "
        "available_at, delayed, claimed_by, claimed_at, fencing_token) "
        f"SELECT s.id, w.shard, w.created_at, w.id, CASE WHEN {sort} = 2 THEN 'unserved' ELSE 'llm' END, "
        "1, 5, 1.0, 2.0, 60.0, 0, 3, "
        f"CASE WHEN {sort} = 1 THEN {NOW * 2} ELSE 0 END, CASE WHEN {sort} = 1 THEN 1 ELSE 0 END, "
        f"CASE WHEN {sort} = 0 THEN 'busy-executor' END, CASE WHEN {sort} = 0 THEN 0 END, 1 "
        "FROM conveyor_steps s JOIN conveyor_workflows w ON w.id = s.workflow_id WHERE s.status = 'running'",
        f"INSERT INTO conveyor_cluster (id, shard_count, epoch, created_at) VALUES (1, {SHARDS}, 1, 0)",
    ]
    with database.writer.begin() as connection:
        for statement in statements:
            # text(): the driver's paramstyle escapes (psycopg reads `%` as a placeholder).
            connection.execute(sa.text(statement))
    if dialect == "postgresql":
        with database.writer.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")


def diagnose(connection: Connection) -> object:
    """What the engine's Diagnose reads (coordinator/engine.py), in the same order."""
    claimed = connection.execute(
        sa.select(tasks.c.claimed_by, sa.func.count())
        .where(tasks.c.claimed_by.is_not(None))
        .group_by(tasks.c.claimed_by)
    ).all()
    return (
        shard_depths(connection, NOW),
        invariant_violations(connection, ["research"], 20),
        Workflows.count_by_status(connection),
        claimed,
    )


def timed(repeats: int, action: Callable[[], object]) -> dict[str, float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(samples), "max_ms": max(samples), "min_ms": min(samples)}


def measure(database: Database, repeats: int) -> dict[str, dict[str, float]]:
    queue = TaskQueue(database.dialect, shard_count=SHARDS)
    results: dict[str, dict[str, float]] = {}
    checks: dict[str, Any] = {}

    def read(operation: Callable[[Connection], object]) -> Callable[[], object]:
        def run() -> object:
            with database.reader.begin() as connection:
                return operation(connection)

        return run

    def rolled_back(operation: Callable[[Connection], object]) -> Callable[[], object]:
        def run() -> object:
            with database.writer.connect() as connection:
                transaction = connection.begin()
                try:
                    return operation(connection)
                finally:
                    transaction.rollback()

        return run

    results["diagnose"] = timed(repeats, read(diagnose))
    checks["violations"] = read(lambda c: invariant_violations(c, ["research"], 20))()
    for label, shards in (
        ("any shard", None),
        ("all shards", list(range(SHARDS))),
        ("5 of 100 shards", [1, 2, 3, 4, 5]),
    ):
        claimed: list[Any] = []

        def claim(
            connection: Connection, shards: list[int] | None = shards, claimed: list[Any] = claimed
        ) -> object:
            claimed[:] = queue.claim(connection, "bench-executor", shards, ["llm"], 10, NOW)
            return claimed

        results[f"claim ({label})"] = timed(repeats, rolled_back(claim))
        checks[f"claimed ({label})"] = len(claimed)
    live = read(
        lambda c: c.execute(
            sa.select(tasks.c.workflow_id).where(tasks.c.kind == "llm", tasks.c.claimed_by.is_(None)).limit(1)
        ).scalar_one()
    )()
    results["cancel"] = timed(repeats, rolled_back(lambda c: cancel_workflows(c, [str(live)], "bench", NOW)))
    results["count by status"] = timed(repeats, read(Workflows.count_by_status))
    results["earliest delayed"] = timed(repeats, read(lambda c: queue.earliest_delayed(c, NOW)))
    if checks["violations"]:
        raise RuntimeError(f"the filled database breaks invariants: {checks['violations']}")
    if not all(count == 10 for key, count in checks.items() if key.startswith("claimed")):
        raise RuntimeError(f"a claim came back short: {checks}")
    return results


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.finished, args.unclaimable, args.claimable, args.repeats = 10_000, 3_000, 200, 3
    console = Console()
    kinds = database_kinds(args.db)
    out = report.ResultsDirectory(NAME, args.results)
    info = machine.describe(args.postgres_url if "postgresql" in kinds else None)
    console.print(
        f"[bold]Big database[/bold]: {args.finished:,} finished workflows, {args.unclaimable:,} unclaimable "
        f"and {args.claimable:,} claimable tasks; results in {out.path}/"
    )
    results: dict[str, Any] = {}
    for kind in kinds:
        with fresh_database(kind, out.workdir(kind), args.postgres_url) as run_database:
            database = Database(run_database.url)
            try:
                database.migrate()
                started = time.perf_counter()
                fill(database, args.finished, args.unclaimable, args.claimable)
                fill_seconds = time.perf_counter() - started
                console.print(f"{kind}: filled in {fill_seconds:.0f} s; timing")
                timings = measure(database, args.repeats)
            finally:
                database.dispose()
            results[kind] = {
                "fill_seconds": fill_seconds,
                "database_mib": run_database.size_bytes() / 2**20,
                "operations": timings,
            }
        # As each database finishes: a long run interrupted later still shows these.
        for operation, timing in timings.items():
            console.print(
                f"  {kind} {operation}: median {timing['median_ms']:.2f} ms, worst {timing['max_ms']:.2f} ms"
            )
    operations = list(next(iter(results.values()))["operations"])
    rows = [
        [
            operation,
            *(
                value
                for kind in kinds
                for value in (
                    results[kind]["operations"][operation]["median_ms"],
                    results[kind]["operations"][operation]["max_ms"],
                )
            ),
        ]
        for operation in operations
    ]
    headers = ["operation", *(f"{kind} {stat} (ms)" for kind in kinds for stat in ("median", "worst"))]
    verdict = "\n".join(
        f"- {kind}: Diagnose median {results[kind]['operations']['diagnose']['median_ms']:.1f} ms, worst "
        f"{results[kind]['operations']['diagnose']['max_ms']:.1f} ms (bar: under {DIAGNOSE_BAR_MS:.0f} ms); "
        f"database {results[kind]['database_mib']:.0f} MiB, filled in {results[kind]['fill_seconds']:.0f} s"
        for kind in kinds
    )
    summary = (
        f"{args.finished:,} finished workflows (one step each), {args.unclaimable:,} unclaimable tasks "
        f"ahead of {args.claimable:,} claimable ones in FIFO order (a third claimed, a third in backoff, "
        f"a third of a kind nobody serves); {args.repeats} timings per operation.\n\n"
        + report.table(headers, rows)
        + "\n"
        + verdict
        + "\n"
    )
    out.write(info, report.options(args), results, summary)
    print(summary)
    return 0
