"""Signals: ``conveyor_signals`` (the per-workflow buffer of SignalWorkflow) and the timeout index.

A signal row is buffered until a ``ctx.wait_for_signal`` step of its name takes it; a wait
with a timeout is a running ``signal`` step with a ``wake_at``, fired by the timer loop
through ``ix_steps_signal_wake_at`` as sleeps are through ``ix_steps_sleeping_wake_at``.
New objects only: no data rewrite.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from conveyor.coordinator.store.dialect import AUTOINCREMENT_ID

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conveyor_signals",
        sa.Column("id", AUTOINCREMENT_ID, nullable=False, autoincrement=True),
        sa.Column("workflow_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.String(64), nullable=True),
        sa.Column("sent_at", sa.BigInteger(), nullable=False),
        sa.Column("step_number", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["conveyor_workflows.id"], name="conveyor_fk_signals_workflow_id_workflows"
        ),
        sa.PrimaryKeyConstraint("id", name="conveyor_pk_signals"),
    )
    op.create_index(
        "conveyor_ix_signals_buffered",
        "conveyor_signals",
        ["workflow_id", "id"],
        postgresql_where=sa.text("step_number IS NULL"),
        sqlite_where=sa.text("step_number IS NULL"),
    )
    op.create_index("conveyor_ix_signals_workflow_id", "conveyor_signals", ["workflow_id"])
    op.create_index(
        "conveyor_ux_signals_idempotency_key",
        "conveyor_signals",
        ["workflow_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "conveyor_ix_steps_signal_wake_at",
        "conveyor_steps",
        ["wake_at"],
        postgresql_where=sa.text("status = 'running' AND kind = 'signal'"),
        sqlite_where=sa.text("status = 'running' AND kind = 'signal'"),
    )


def downgrade() -> None:
    op.drop_index("conveyor_ix_steps_signal_wake_at", table_name="conveyor_steps")
    op.drop_table("conveyor_signals")
