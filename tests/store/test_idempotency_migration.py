"""Migration 0010 on a database of revision 0007 holding keyed workflows and their journal.

Keys move from ``UNIQUE (idempotency_key)`` to ``UNIQUE (name, idempotency_key)``. On SQLite
that rebuilds ``conveyor_workflows`` under the journal's foreign keys: every row, index and
count trigger must come through, and the schema must then be exactly ``schema.py``'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from conveyor.coordinator.store.database import Database, migration_config
from conveyor.coordinator.store.namespace import VERSION_TABLE
from conveyor.coordinator.store.schema import metadata, workflow_counts


def tables_now(db: Database) -> dict[str, sa.Table]:
    """The journal tables as they are at the database's current revision (not as schema.py
    spells them at head, whose newer columns do not exist yet)."""
    reflected = sa.MetaData()
    with db.writer.connect() as connection:
        reflected.reflect(connection, only=["conveyor_workflows", "conveyor_steps"])
    return {"workflows": reflected.tables["conveyor_workflows"], "steps": reflected.tables["conveyor_steps"]}


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


def migrate_to(db: Database, revision: str) -> None:
    with db.writer.connect() as connection:
        command.upgrade(migration_config(connection), revision)
        connection.commit()


def downgrade_to(db: Database, revision: str) -> None:
    with db.writer.connect() as connection:
        command.downgrade(migration_config(connection), revision)
        connection.commit()


def workflow_row(workflow_id: str, name: str, key: str | None, created_at: int) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "name": name,
        "status": "running",
        "shard": 0,
        "args": '{"n":1}',
        "idempotency_key": key,
        "created_at": created_at,
        "step_count": 1,
    }


def step_row(workflow_id: str) -> dict[str, Any]:
    return {
        "workflow_id": workflow_id,
        "number": 0,
        "kind": "task",
        "name": "s",
        "args": "{}",
        "status": "running",
        "attempt": 1,
        "created_at": 1,
    }


def table_rows(db: Database, columns: dict[str, list[str]]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the journal tables, ``columns`` of each (those of an older revision)."""
    tables = tables_now(db)
    with db.writer.connect() as connection:

        def rows(name: str) -> list[tuple[Any, ...]]:
            table = tables[name]
            query = sa.select(*(table.c[c] for c in columns[name])).order_by(table.c.id)
            return [tuple(r) for r in connection.execute(query)]

        return {
            "workflows": rows("workflows"),
            "steps": rows("steps"),
            "counts": [
                tuple(r)
                for r in connection.execute(
                    sa.select(workflow_counts).order_by(workflow_counts.c.name, workflow_counts.c.status)
                )
            ],
        }


def test_upgrading_from_0007_keeps_every_row_and_scopes_keys_per_name(database: Database) -> None:
    migrate_to(database, "0007")
    at_0007 = tables_now(database)
    workflows, steps = at_0007["workflows"], at_0007["steps"]
    columns = {name: [c.name for c in table.columns] for name, table in at_0007.items()}
    with database.writer.begin() as connection:
        connection.execute(
            sa.insert(workflows),
            [
                workflow_row("wf-a", "greet", "order-1", 1),
                workflow_row("wf-b", "shout", "order-2", 2),
                workflow_row("wf-c", "greet", None, 3),
            ],
        )
        connection.execute(sa.insert(steps), [step_row("wf-a"), step_row("wf-b"), step_row("wf-c")])
        with pytest.raises(sa.exc.IntegrityError), connection.begin_nested():
            # Before: a key is global, so another name cannot use it.
            connection.execute(sa.insert(workflows).values(workflow_row("wf-x", "shout", "order-1", 4)))
    before = table_rows(database, columns)

    database.migrate()

    assert table_rows(database, columns) == before
    with database.writer.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert list(compare_metadata(context, metadata)) == []
    with database.writer.begin() as connection:
        # After: another name may use the key; the same name may not, and the journal still
        # refers to its workflows (foreign keys hold), and the count triggers still count.
        connection.execute(sa.insert(workflows).values(workflow_row("wf-d", "shout", "order-1", 5)))
        with pytest.raises(sa.exc.IntegrityError), connection.begin_nested():
            connection.execute(sa.insert(workflows).values(workflow_row("wf-e", "greet", "order-1", 6)))
        with pytest.raises(sa.exc.IntegrityError), connection.begin_nested():
            connection.execute(sa.insert(steps).values(step_row("no-such-workflow")))
        totals = dict(
            connection.execute(
                sa.select(workflow_counts.c.name, workflow_counts.c.total).where(
                    workflow_counts.c.status == "running"
                )
            ).all()
        )
    assert totals == {"greet": 2, "shout": 2}


def test_downgrading_refuses_while_two_names_share_a_key_and_works_once_they_do_not(
    database: Database,
) -> None:
    database.migrate()
    workflows = tables_now(database)["workflows"]
    with database.writer.begin() as connection:
        connection.execute(
            sa.insert(workflows),
            [workflow_row("wf-a", "greet", "shared", 1), workflow_row("wf-b", "shout", "shared", 2)],
        )
    with pytest.raises(RuntimeError, match="key 'shared' is used by workflows of different names"):
        downgrade_to(database, "0007")
    with database.writer.begin() as connection:
        connection.execute(sa.update(workflows).where(workflows.c.id == "wf-b").values(idempotency_key=None))

    downgrade_to(database, "0007")

    workflows = tables_now(database)["workflows"]
    with database.writer.begin() as connection, pytest.raises(sa.exc.IntegrityError):
        connection.execute(sa.insert(workflows).values(workflow_row("wf-c", "shout", "shared", 3)))
