"""Server-side start-to-close deadlines: ``tasks.deadline_at`` and its partial index.

A claim stamps the task with the time by which its result must arrive; the
coordinator's deadline loop takes back claimed tasks past it (a hung or lost
attempt on a live executor) and retries or fails them. The index holds claimed
tasks only, so the loop's scan is bounded by the executors' capacity, not the queue.

Tasks claimed before the upgrade get the default deadline (600 s plus 30 s grace)
from their claim time.

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from conveyor.coordinator.store.namespace import migration_name as named

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(named("tasks"), sa.Column("deadline_at", sa.BigInteger(), nullable=True))
    op.execute(
        f"UPDATE {named('tasks')} "
        "SET deadline_at = claimed_at + CAST((COALESCE(timeout, 600) + 30) * 1000000 AS BIGINT) "
        "WHERE claimed_by IS NOT NULL"
    )
    op.create_index(
        named("ix_tasks_deadline_at"),
        named("tasks"),
        ["deadline_at"],
        postgresql_where=sa.text("claimed_by IS NOT NULL"),
        sqlite_where=sa.text("claimed_by IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(named("ix_tasks_deadline_at"), table_name=named("tasks"))
    with op.batch_alter_table(named("tasks")) as batch:
        batch.drop_column("deadline_at")
