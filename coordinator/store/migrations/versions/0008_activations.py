"""Activations: ``steps.delivered_in`` (with its partial index) and ``workflows.activations``.

A workflow advances as soon as any of its steps finishes (see conveyor.coordinator.replay):
each step records the activation that delivered its outcome to the workflow code, and each
workflow how many activations it has run. Both are NULL for rows written before the upgrade:
a running workflow with ``activations`` NULL has its activations reconstructed from its journal
by its next replay (every step it started had finished before it advanced, as it then did).
No data rewrite; the index holds the steps whose outcome is not delivered yet (and, until they
are deleted, the steps written before the upgrade).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("conveyor_steps", sa.Column("delivered_in", sa.Integer(), nullable=True))
    op.add_column("conveyor_workflows", sa.Column("activations", sa.Integer(), nullable=True))
    op.create_index(
        "conveyor_ix_steps_undelivered_workflow_id",
        "conveyor_steps",
        ["workflow_id"],
        postgresql_where=sa.text("delivered_in IS NULL"),
        sqlite_where=sa.text("delivered_in IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("conveyor_ix_steps_undelivered_workflow_id", table_name="conveyor_steps")
    op.drop_column("conveyor_workflows", "activations")
    op.drop_column("conveyor_steps", "delivered_in")
