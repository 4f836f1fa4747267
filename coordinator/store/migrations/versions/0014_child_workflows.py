"""Child workflows: ``parent_id``, ``parent_step`` and ``root_created_at`` on ``conveyor_workflows``.

Nullable columns (NULL for every root workflow, so nothing is rewritten) and a partial
index over children by parent.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("conveyor_workflows", sa.Column("parent_id", sa.String(64), nullable=True))
    op.add_column("conveyor_workflows", sa.Column("parent_step", sa.Integer(), nullable=True))
    op.add_column("conveyor_workflows", sa.Column("root_created_at", sa.BigInteger(), nullable=True))
    op.create_index(
        "conveyor_ix_workflows_parent_id",
        "conveyor_workflows",
        ["parent_id"],
        postgresql_where=sa.text("parent_id IS NOT NULL"),
        sqlite_where=sa.text("parent_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("conveyor_ix_workflows_parent_id", table_name="conveyor_workflows")
    for column in ("root_created_at", "parent_step", "parent_id"):
        op.drop_column("conveyor_workflows", column)
