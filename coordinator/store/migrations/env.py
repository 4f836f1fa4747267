"""Alembic environment: runs on the connection the coordinator hands over.

Migrations are run by :meth:`conveyor.coordinator.store.database.Database.migrate` (at every
coordinator start), never from an ``alembic.ini``: the connection arrives through
``config.attributes["connection"]``. Conveyor's revision lives in its own version table
(``conveyor_alembic_version``), never in the application's ``alembic_version``.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from conveyor.coordinator.store.namespace import LEGACY_NAMES_OPTION, VERSION_TABLE
from conveyor.coordinator.store.schema import metadata

attributes = context.config.attributes
connection = attributes["connection"]
#: Read by the migrations through ``op.get_context().opts`` (see ``namespace.migration_name``).
conveyor_options: dict[str, Any] = {LEGACY_NAMES_OPTION: bool(attributes.get(LEGACY_NAMES_OPTION, False))}
context.configure(
    connection=connection,
    target_metadata=metadata,
    # Another version table only where tests build a database as Conveyor before its namespace did.
    version_table=attributes.get("version_table", VERSION_TABLE),
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead. Dropping
    # a column is the exception: migrations spell it op.drop_column (ALTER TABLE DROP COLUMN,
    # SQLite 3.35+), because rebuilding conveyor_workflows drops its count triggers and, with
    # foreign keys on, fails on the journal rows that refer to it.
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=True,
    compare_type=True,
    **conveyor_options,
)
with context.begin_transaction():
    context.run_migrations()
