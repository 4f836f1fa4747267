"""Retention: an index of finished workflows by status and finish time.

``conveyor_ix_workflows_finished`` on ``conveyor_workflows (status, completed_at)``, partial
(``completed_at IS NOT NULL``): the retention loop and ``PurgeWorkflows`` read the oldest
finished workflows of each status from its front instead of scanning the table. Running
workflows have no ``completed_at``, so starting one does not touch it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_FINISHED = sa.text("completed_at IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "conveyor_ix_workflows_finished",
        "conveyor_workflows",
        ["status", "completed_at"],
        postgresql_where=_FINISHED,
        sqlite_where=_FINISHED,
    )


def downgrade() -> None:
    op.drop_index("conveyor_ix_workflows_finished", table_name="conveyor_workflows")
