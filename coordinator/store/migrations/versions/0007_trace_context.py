"""Trace context: ``conveyor_workflows.trace_context``, the W3C Trace Context of the workflow's start.

A nullable TEXT column (JSON: {"traceparent": ..., "tracestate": ...}) that every task
of the workflow carries to its executor, so their spans join the caller's trace. Workflows
started before the upgrade, or without a trace, have NULL. No index, no data rewrite.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("conveyor_workflows", sa.Column("trace_context", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("conveyor_workflows", "trace_context")
