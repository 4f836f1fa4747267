"""Alembic environment: runs on the connection the coordinator hands over.

Migrations are run by :meth:`conveyor.coordinator.store.database.Database.migrate` (at every
coordinator start), never from an ``alembic.ini``: the connection arrives through
``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from conveyor.coordinator.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
