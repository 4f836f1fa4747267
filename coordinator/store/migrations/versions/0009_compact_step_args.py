"""Compacted step arguments: ``conveyor_blobs`` and ``conveyor_steps.args_digest``.

An agent loop resends its growing conversation at every step; storing each step's arguments
whole made the journal grow with the square of the turns. New steps store large arguments
compacted: their parts (message runs, large values) once per workflow in ``conveyor_blobs``,
and in ``args`` the JSON with references to them, plus ``args_digest``, the SHA-256 of the
full canonical arguments that replay compares (see store/payloads.py). Rows written before
the upgrade keep their plain ``args`` and a NULL digest, and read as before: no data rewrite.

Downgrade writes every compacted ``args`` back in full before dropping the table and column.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("conveyor_steps", sa.Column("args_digest", sa.String(length=43), nullable=True))
    op.create_table(
        "conveyor_blobs",
        sa.Column("workflow_id", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=43), nullable=False),
        sa.Column("parent", sa.String(length=43), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["conveyor_workflows.id"], name="conveyor_fk_blobs_workflow_id_workflows"
        ),
        sa.PrimaryKeyConstraint("workflow_id", "digest", name="conveyor_pk_blobs"),
    )


def downgrade() -> None:
    from conveyor.coordinator.store.payloads import inline_all_step_args

    inline_all_step_args(op.get_bind())
    op.drop_table("conveyor_blobs")
    op.drop_column("conveyor_steps", "args_digest")
