"""Idempotency keys per workflow name: ``UNIQUE (name, idempotency_key)``, not ``UNIQUE (idempotency_key)``.

A key used to be global: starting workflow B with a key workflow A had used returned A.
Keys now belong to a workflow name, as Temporal's workflow ids belong to a namespace. Every
stored key was unique on its own, so every stored pair is unique too: no row changes.

* PostgreSQL drops the constraint and creates the new one in place.
* SQLite cannot drop a constraint, so ``conveyor_workflows`` is rebuilt from its own
  ``CREATE TABLE`` with the constraint replaced: rows copied aside, table dropped and created
  anew, rows copied back, indexes and count triggers recreated. The journal's foreign keys
  point at the table's name and are checked at commit (``defer_foreign_keys``): dropping
  the table leaves them dangling until its rows are back, and a row missing would fail the
  commit, not the data.

The downgrade restores the global constraint, and refuses (naming a key) when two
workflow names now share one.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.engine import Connection

from conveyor.coordinator.store import counts

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TABLE = "conveyor_workflows"
GLOBAL = ("conveyor_uq_workflows_idempotency_key", "idempotency_key")
PER_NAME = ("conveyor_uq_workflows_name_idempotency_key", "name, idempotency_key")


def upgrade() -> None:
    _replace_constraint(op.get_bind(), GLOBAL, PER_NAME)


def downgrade() -> None:
    connection = op.get_bind()
    shared = connection.exec_driver_sql(
        f"SELECT idempotency_key FROM {TABLE} WHERE idempotency_key IS NOT NULL "
        "GROUP BY idempotency_key HAVING COUNT(*) > 1 LIMIT 1"
    ).scalar()
    if shared is not None:
        raise RuntimeError(
            f"cannot make idempotency keys global again: key {shared!r} is used by workflows of "
            "different names; clear or change one of them first"
        )
    _replace_constraint(connection, PER_NAME, GLOBAL)


def _replace_constraint(connection: Connection, old: tuple[str, str], new: tuple[str, str]) -> None:
    (old_name, old_columns), (new_name, new_columns) = old, new
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"ALTER TABLE {TABLE} DROP CONSTRAINT {old_name}")
        connection.exec_driver_sql(f"ALTER TABLE {TABLE} ADD CONSTRAINT {new_name} UNIQUE ({new_columns})")
        return
    definition = connection.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).scalar_one()
    old_clause = f"CONSTRAINT {old_name} UNIQUE ({old_columns})"
    if old_clause not in definition:
        raise RuntimeError(f"{TABLE} has no {old_clause}; its definition is: {definition}")
    indexes = list(
        connection.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (TABLE,),
        ).scalars()
    )
    copy = f"{TABLE}_copy_0010"
    counts.drop_triggers(connection)
    connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
    connection.exec_driver_sql(f"CREATE TABLE {copy} AS SELECT * FROM {TABLE}")
    connection.exec_driver_sql(f"DROP TABLE {TABLE}")
    connection.exec_driver_sql(
        definition.replace(old_clause, f"CONSTRAINT {new_name} UNIQUE ({new_columns})")
    )
    connection.exec_driver_sql(f"INSERT INTO {TABLE} SELECT * FROM {copy}")
    connection.exec_driver_sql(f"DROP TABLE {copy}")
    for index in indexes:
        connection.exec_driver_sql(index)
    counts.create_triggers(connection)
