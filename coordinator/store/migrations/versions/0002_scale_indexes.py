"""Indexes that keep two queries from growing with the size of the database.

* ``workflows (name, status)``: counting a name's workflows by status (``CountWorkflows``,
  which dashboards and the benchmarks' progress poll every second) reads the index
  only, instead of every row of the name.
* ``tasks (workflow_created_at, id)``: the claim that falls back to any shard, once an
  executor's own shards run dry, walks the FIFO order across shards instead of sorting
  every unclaimed task (20 ms at 100,000 queued tasks on SQLite, 0.05 ms with it).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

from conveyor.coordinator.store.namespace import migration_name as named

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(named("ix_workflows_name_status"), named("workflows"), ["name", "status"])
    op.create_index(named("ix_tasks_workflow_created_at_id"), named("tasks"), ["workflow_created_at", "id"])


def downgrade() -> None:
    op.drop_index(named("ix_tasks_workflow_created_at_id"), table_name=named("tasks"))
    op.drop_index(named("ix_workflows_name_status"), table_name=named("workflows"))
