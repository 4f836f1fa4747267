"""The queue's hot queries read through indexes, not whole tables, on SQLite and PostgreSQL.

Each test runs the store's real code on a migrated database holding finished workflows
and tasks that cannot be claimed (claimed ones, ones waiting out a backoff, ones of a
kind nobody serves), records the SQL it sends, and asks the database for each
statement's plan. Speed itself is measured in ``bench/`` (``python -m bench bigdb``);
these tests pin the plans that make it independent of those rows.

PostgreSQL plans from statistics, which for a test-sized table favour reading it
whole; the plans are taken with sequential scans, merge and hash joins off (and the
tables analyzed), so that a table is read whole only where no index can answer the query.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection

from conveyor.coordinator.model import StepStatus, WorkflowStatus
from conveyor.coordinator.store import Database, TaskQueue, retention
from conveyor.coordinator.store.diagnosis import invariant_violations, shard_depths
from conveyor.coordinator.store.journal import cancel_workflows
from conveyor.coordinator.store.retention import PurgeSelection
from conveyor.coordinator.store.schema import steps, tasks, workflows
from conveyor.coordinator.store.workflows import Workflows

SHARDS = 8
NOW = 10_000_000_000
FINISHED = 300
#: Unclaimable tasks of each sort, and claimable ones.
EACH = 60


@dataclass
class Plan:
    """What one statement's plan reads."""

    sql: str
    #: Tables read whole (SQLite ``SCAN t``, PostgreSQL ``Seq Scan`` or an index scan with no condition).
    full_scans: set[str] = field(default_factory=set)
    indexes: set[str] = field(default_factory=set)
    text: str = ""


def populate(connection: Connection) -> dict[str, list[str]]:
    """Finished workflows, running ones with tasks of every sort; returns workflow ids by sort."""
    ids: dict[str, list[str]] = {}
    created = 1
    rng = random.Random(7)
    for status in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
        rows = []
        for _ in range(FINISHED):
            rows.append(
                {
                    "id": f"done-{created}",
                    "name": "research",
                    "status": status,
                    "shard": created % SHARDS,
                    "args": "{}",
                    "created_at": created,
                    "completed_at": created + 1,
                    "step_count": 1,
                }
            )
            created += 1
        connection.execute(sa.insert(workflows), rows)
    for sort, kind, claimed_by, delayed, available_at in (
        ("claimed", "llm", "executor-x", 0, 0),
        ("delayed", "llm", None, 1, NOW + 60_000_000),
        ("unserved", "nobody-serves-this", None, 0, 0),
        ("claimable", "llm", None, 0, 0),
    ):
        ids[sort] = []
        for _ in range(EACH):
            workflow_id = f"{sort}-{created}"
            shard = rng.randrange(SHARDS)
            connection.execute(
                sa.insert(workflows).values(
                    id=workflow_id,
                    name="research",
                    status=WorkflowStatus.RUNNING,
                    shard=shard,
                    args="{}",
                    created_at=created,
                    step_count=1,
                )
            )
            step_id = connection.execute(
                sa.insert(steps)
                .values(
                    workflow_id=workflow_id,
                    number=0,
                    kind="llm",
                    name="call",
                    args="{}",
                    status=StepStatus.RUNNING,
                    attempt=0,
                    created_at=created,
                )
                .returning(steps.c.id)
            ).scalar_one()
            connection.execute(
                sa.insert(tasks).values(
                    id=step_id,
                    shard=shard,
                    workflow_created_at=created,
                    workflow_id=workflow_id,
                    kind=kind,
                    attempt=1,
                    max_attempts=3,
                    initial_backoff=1.0,
                    backoff_multiplier=2.0,
                    max_backoff=60.0,
                    rate_limit_waits=0,
                    max_rate_limit_waits=3,
                    available_at=available_at,
                    delayed=delayed,
                    claimed_by=claimed_by,
                    claimed_at=0 if claimed_by else None,
                    fencing_token=1 if claimed_by else 0,
                )
            )
            ids[sort].append(workflow_id)
            created += 1
    return ids


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.migrate()
    db.open_cluster(SHARDS)
    with db.writer.begin() as connection:
        populate(connection)
    if db.dialect.name == "postgresql":
        with db.writer.connect() as connection:
            connection.exec_driver_sql("ANALYZE")
            connection.commit()
    yield db
    db.dispose()


def plans_of(
    database: Database, action: Callable[[Connection], object], *, joins: bool = False
) -> list[Plan]:
    """Run ``action`` in a transaction that is rolled back; the plan of every statement it sent.

    ``joins``: leave PostgreSQL's hash and merge joins on, to catch a query the planner can
    turn into a join that reads a whole table (as it does on a big one).
    """
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool) -> None:
        if not many and not statement.lstrip().upper().startswith(
            ("BEGIN", "PRAGMA", "SAVEPOINT", "RELEASE")
        ):
            sent.append((statement, parameters))

    engine = database.writer
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            if database.dialect.name == "postgresql":
                # Key lookups (nested loops) wherever an index allows them, as on a big table.
                for setting in (
                    ("enable_seqscan",)
                    if joins
                    else ("enable_seqscan", "enable_mergejoin", "enable_hashjoin")
                ):
                    connection.exec_driver_sql(f"SET LOCAL {setting} = off")
            event.listen(engine, "before_cursor_execute", record)
            try:
                action(connection)
            finally:
                event.remove(engine, "before_cursor_execute", record)
            return [explain(connection, database.dialect.name, sql, parameters) for sql, parameters in sent]
        finally:
            transaction.rollback()


def explain(connection: Connection, dialect: str, sql: str, parameters: Any) -> Plan:
    plan = Plan(sql)
    if dialect == "sqlite":
        rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, parameters).all()
        plan.text = "\n".join(row[-1] for row in rows)
        for row in rows:
            detail: str = row[-1]
            words = detail.split()
            index = words[words.index("INDEX") + 1] if "INDEX" in words else None
            if index is not None:
                plan.indexes.add(index)
            # A scan of a partial index reads only the rows it holds.
            if (
                words[0] == "SCAN"
                and len(words) > 1
                and not (index and is_partial(connection, dialect, index))
            ):
                plan.full_scans.add(words[1])
        return plan
    [[document]] = connection.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, parameters).all()
    if isinstance(document, str):
        document = json.loads(document)
    plan.text = json.dumps(document, indent=1)

    def walk(node: dict[str, Any]) -> None:
        kind = node["Node Type"]
        if "Index Name" in node:
            plan.indexes.add(node["Index Name"])
        if (kind == "Seq Scan" and "Relation Name" in node) or (
            kind in ("Index Scan", "Index Only Scan")
            and "Index Cond" not in node
            # An unconditioned walk of a partial index reads only the rows it holds.
            and not is_partial(connection, dialect, node["Index Name"])
        ):
            plan.full_scans.add(node["Relation Name"])
        if kind == "Bitmap Heap Scan":
            # Its bitmap read a whole (non-partial) index when a child has no condition.
            for child in node.get("Plans", []):
                if (
                    child["Node Type"] == "Bitmap Index Scan"
                    and "Index Cond" not in child
                    and not is_partial(connection, dialect, child["Index Name"])
                ):
                    plan.full_scans.add(node["Relation Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(document[0]["Plan"])
    return plan


def is_partial(connection: Connection, dialect: str, index: str) -> bool:
    if dialect == "sqlite":
        sql = connection.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = ?", (index,)).scalar()
        return sql is not None and " WHERE " in sql.upper()
    return bool(
        connection.exec_driver_sql(
            "SELECT indpred IS NOT NULL FROM pg_index WHERE indexrelid = %(name)s::regclass", {"name": index}
        ).scalar()
    )


def describe(plans: list[Plan]) -> str:
    return "\n\n".join(
        f"{plan.sql}\n-> full scans {sorted(plan.full_scans)}, indexes {sorted(plan.indexes)}\n{plan.text}"
        for plan in plans
    )


# --- the claim ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shards", ["any", "few", "most"])
def test_the_claim_walks_only_claimable_tasks(database: Database, shards: str) -> None:
    """Claimed, delayed and unserved tasks are outside the claim's index, whichever plan it takes."""
    held = {"any": None, "few": [3], "most": list(range(SHARDS - 1))}[shards]
    queue = TaskQueue(database.dialect, shard_count=SHARDS * 100 if shards == "few" else SHARDS)
    claimed: list[Any] = []

    plans = plans_of(
        database,
        lambda c: claimed.extend(queue.claim(c, "executor-a", held, ["llm", "embed"], 5, NOW)),
    )

    assert claimed  # the claim ran and took tasks, so its statements are the ones a claim sends
    for plan in plans:
        assert "conveyor_tasks" not in plan.full_scans, describe(plans)
    [claim] = [plan for plan in plans if "claimable" in plan.sql]
    assert claim.indexes & {"conveyor_ix_tasks_ready_fifo", "conveyor_ix_tasks_ready_shard_fifo"}, describe(
        plans
    )
    assert not claim.indexes & {
        "conveyor_ix_tasks_fifo",
        "conveyor_ix_tasks_workflow_created_at_id",
        "conveyor_ix_tasks_claimed_by",
    }, describe(plans)


def test_the_backoff_timer_reads_only_delayed_tasks(database: Database) -> None:
    queue = TaskQueue(database.dialect)
    found: list[int | None] = []

    plans = plans_of(database, lambda c: found.append(queue.earliest_delayed(c, NOW)))

    assert found == [NOW + 60_000_000]
    [plan] = plans
    assert "conveyor_ix_tasks_delayed_available_at" in plan.indexes, describe(plans)
    assert not plan.full_scans, describe(plans)


# --- Diagnose and cancels -------------------------------------------------------------------------


def test_diagnose_never_reads_every_workflow_or_step(database: Database) -> None:
    """The invariant checks read finished workflows by key only: their cost follows work in progress."""
    violations: list[Any] = []

    plans = plans_of(
        database, lambda c: violations.extend(invariant_violations(c, ["research"], 20)), joins=True
    )

    assert violations == []  # the data is consistent: the checks ran to the end
    for plan in plans:
        assert not plan.full_scans & {"conveyor_workflows", "conveyor_steps"}, describe(plans)


def test_diagnose_reports_a_finished_workflow_with_a_task(database: Database) -> None:
    """The check still finds what it looks for (driven from the queues now)."""
    with database.writer.begin() as connection:
        finished = connection.execute(
            sa.update(workflows)
            .where(workflows.c.id.like("unserved-%"))
            .values(status=WorkflowStatus.FAILED)
            .returning(workflows.c.id)
        ).scalars()
        finished_ids = sorted(finished)
    with database.reader.connect() as connection:
        violations = {v.kind: v for v in invariant_violations(connection, ["research"], 1000)}
        depths = shard_depths(connection, NOW)

    assert violations["finished_with_pending_work"].count == EACH
    assert sorted(violations["finished_with_pending_work"].workflow_ids) == finished_ids
    assert sum(d.queued for d in depths.values()) == 2 * EACH  # claimable and unserved
    assert sum(d.delayed for d in depths.values()) == EACH
    assert sum(d.claimed for d in depths.values()) == EACH


def test_cancelling_a_workflow_reads_its_rows_by_key(database: Database) -> None:
    with database.reader.connect() as connection:
        workflow_id = connection.execute(
            sa.select(tasks.c.workflow_id).where(tasks.c.kind == "llm", tasks.c.claimed_by.is_(None)).limit(1)
        ).scalar_one()
    cancelled: list[str] = []

    plans = plans_of(database, lambda c: cancelled.extend(cancel_workflows(c, [workflow_id], "test", NOW)))

    assert cancelled == [workflow_id]
    for plan in plans:
        assert not plan.full_scans & {
            "conveyor_workflows",
            "conveyor_steps",
            "conveyor_tasks",
            "conveyor_replay_queue",
        }, describe(plans)
    [delete_tasks] = [
        plan for plan in plans if plan.sql.lstrip().upper().startswith("DELETE FROM CONVEYOR_TASKS")
    ]
    assert "conveyor_ix_tasks_workflow_id" in delete_tasks.indexes, describe(plans)


def test_counting_workflows_by_status_reads_no_table_whole(database: Database) -> None:
    counts: list[dict[str, int]] = []

    plans = plans_of(database, lambda c: counts.append(Workflows.count_by_status(c)))

    assert counts == [
        {
            WorkflowStatus.COMPLETED: FINISHED,
            WorkflowStatus.FAILED: FINISHED,
            WorkflowStatus.CANCELLED: FINISHED,
            WorkflowStatus.RUNNING: 4 * EACH,
        }
    ]
    for plan in plans:
        assert "conveyor_workflows" not in plan.full_scans, describe(plans)


def test_a_purge_batch_finds_old_finished_workflows_through_their_index(database: Database) -> None:
    selection = PurgeSelection(finished_before=100)
    purged: list[int] = []

    plans = plans_of(
        database,
        lambda c: purged.extend([retention.count(c, selection, 0), retention.purge_oldest(c, selection, 50)]),
    )

    assert purged[0] == len([1 for created in range(1, 3 * FINISHED + 1) if created + 1 < 100])
    assert purged[1] == 50
    for plan in plans:
        assert not plan.full_scans & {
            "conveyor_workflows",
            "conveyor_steps",
            "conveyor_tasks",
            "conveyor_replay_queue",
        }, describe(plans)
    selects = [
        plan
        for plan in plans
        if "completed_at <" in plan.sql and plan.sql.lstrip().upper().startswith("SELECT")
    ]
    assert selects and all("conveyor_ix_workflows_finished" in plan.indexes for plan in selects), describe(
        plans
    )
