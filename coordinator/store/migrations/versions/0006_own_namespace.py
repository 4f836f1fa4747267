"""Conveyor's own namespace: every table, index, constraint, sequence and trigger named ``conveyor_...``.

A database created since this revision has the prefixed names from its first migration
(migrations 0001-0005 name their objects through ``migration_name``), and this migration
has nothing to do. A database created before it (its revision found in ``alembic_version``,
see ``Database.migrate``, which moves that row to ``conveyor_alembic_version`` first) still
has the names of revision 0005, listed below, and gets them renamed here, rows intact:

* PostgreSQL renames in place: tables, indexes, constraints (with their indexes) and the
  sequences of serial columns; the trigger functions are recreated to write the renamed
  counts table.
* SQLite cannot rename an index or a constraint, so each table is rebuilt under its new
  name from its own ``CREATE TABLE`` (constraints and references renamed), its rows copied,
  its indexes recreated, and the old table dropped, children before parents.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import re

from alembic import op
from sqlalchemy.engine import Connection

from conveyor.coordinator.store import counts
from conveyor.coordinator.store.namespace import LEGACY_NAMES_OPTION

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

PREFIX = "conveyor_"

#: Revision 0005's tables, parents before the tables that reference them.
TABLES = (
    "cluster",
    "workflows",
    "steps",
    "tasks",
    "replay_queue",
    "executors",
    "shard_leases",
    "workflow_counts",
    "write_commits",
    "coordinator_holder",
)
#: Revision 0005's indexes that back no constraint.
INDEXES = (
    "ix_workflows_created_at",
    "ix_workflows_status_created_at",
    "ix_workflows_name_created_at",
    "ix_workflows_name_status",
    "ix_steps_running_workflow_id",
    "ix_steps_sleeping_wake_at",
    "ix_tasks_fifo",
    "ix_tasks_workflow_created_at_id",
    "ix_tasks_ready_fifo",
    "ix_tasks_ready_shard_fifo",
    "ix_tasks_delayed_available_at",
    "ix_tasks_claimed_by",
    "ix_tasks_workflow_id",
    "ix_tasks_deadline_at",
    "ix_replay_queue_fifo",
    "ix_replay_queue_shard",
)
#: Revision 0005's constraints other than the primary keys (``pk_<table>``, one per table).
CONSTRAINTS = {
    "workflows": ("uq_workflows_idempotency_key",),
    "steps": ("uq_steps_workflow_id_number", "fk_steps_workflow_id_workflows"),
    "tasks": ("fk_tasks_id_steps",),
    "replay_queue": ("fk_replay_queue_workflow_id_workflows",),
}
#: Tables whose integer ``id`` PostgreSQL may back with a sequence (``<table>_id_seq``).
SERIAL_ID_TABLES = ("cluster", "steps", "executors", "coordinator_holder")


def upgrade() -> None:
    if not op.get_context().opts.get(LEGACY_NAMES_OPTION, False):
        return  # created with the prefixed names
    connection = op.get_bind()
    counts.drop_triggers(connection, prefix="")
    if connection.dialect.name == "postgresql":
        _rename_on_postgres(connection)
    else:
        _rebuild_on_sqlite(connection)
    counts.create_triggers(connection, prefix=PREFIX)


def _rename_on_postgres(connection: Connection) -> None:
    for table in TABLES:
        connection.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {PREFIX}{table}")
        connection.exec_driver_sql(
            f"ALTER TABLE {PREFIX}{table} RENAME CONSTRAINT pk_{table} TO {PREFIX}pk_{table}"
        )
        for constraint in CONSTRAINTS.get(table, ()):
            connection.exec_driver_sql(
                f"ALTER TABLE {PREFIX}{table} RENAME CONSTRAINT {constraint} TO {PREFIX}{constraint}"
            )
    for index in INDEXES:
        connection.exec_driver_sql(f"ALTER INDEX {index} RENAME TO {PREFIX}{index}")
    for table in SERIAL_ID_TABLES:
        sequence = connection.exec_driver_sql(
            "SELECT pg_get_serial_sequence(%(table)s, 'id')", {"table": f"{PREFIX}{table}"}
        ).scalar()
        if sequence is not None:
            connection.exec_driver_sql(f"ALTER SEQUENCE {sequence} RENAME TO {PREFIX}{table}_id_seq")


def _rebuild_on_sqlite(connection: Connection) -> None:
    definitions: dict[str, str] = {
        name: sql
        for name, sql in connection.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table'"
        )
    }
    indexes = connection.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN "
        f"({', '.join(repr(table) for table in TABLES)})"
    ).scalars()
    index_definitions = [_renamed_index(sql) for sql in indexes]
    for table in TABLES:
        connection.exec_driver_sql(_renamed_table(definitions[table]))
        connection.exec_driver_sql(f"INSERT INTO {PREFIX}{table} SELECT * FROM {table}")
    for table in reversed(TABLES):
        connection.exec_driver_sql(f"DROP TABLE {table}")
    for sql in index_definitions:
        connection.exec_driver_sql(sql)


_OLD_TABLE = "|".join(TABLES)


def _renamed_table(sql: str) -> str:
    sql = re.sub(rf'^CREATE TABLE\s+"?({_OLD_TABLE})"?', rf"CREATE TABLE {PREFIX}\1", sql)
    sql = re.sub(r'\bCONSTRAINT\s+"?(\w+)"?', rf"CONSTRAINT {PREFIX}\1", sql)
    return re.sub(rf'\bREFERENCES\s+"?({_OLD_TABLE})"?', rf"REFERENCES {PREFIX}\1", sql)


def _renamed_index(sql: str) -> str:
    return re.sub(
        rf'^CREATE (UNIQUE )?INDEX\s+"?(\w+)"?\s+ON\s+"?({_OLD_TABLE})"?',
        rf"CREATE \1INDEX {PREFIX}\2 ON {PREFIX}\3",
        sql,
    )


def downgrade() -> None:
    # The names stay prefixed: the downgrades of 0001-0005 name objects through
    # ``migration_name`` too, so they find them. Going back to the old names (and to
    # ``alembic_version``) is not supported: the code before this revision is gone.
    pass
