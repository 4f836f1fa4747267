"""Initial schema: workflows, journal, FIFO task queue, replay queue, executors, leases.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from conveyor.coordinator.store.dialect import AUTOINCREMENT_ID
from conveyor.coordinator.store.namespace import migration_name as named

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

RUNNING = sa.text("status = 'running'")
SLEEPING = sa.text("status = 'running' AND kind = 'sleep'")


def upgrade() -> None:
    op.create_table(
        named("cluster"),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("shard_count", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=named("pk_cluster")),
    )
    op.create_table(
        named("workflows"),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("completed_at", sa.BigInteger(), nullable=True),
        sa.Column("step_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=named("pk_workflows")),
        sa.UniqueConstraint("idempotency_key", name=named("uq_workflows_idempotency_key")),
    )
    op.create_index(named("ix_workflows_created_at"), named("workflows"), ["created_at"])
    op.create_index(named("ix_workflows_status_created_at"), named("workflows"), ["status", "created_at"])
    op.create_index(named("ix_workflows_name_created_at"), named("workflows"), ["name", "created_at"])

    op.create_table(
        named("steps"),
        sa.Column("id", AUTOINCREMENT_ID, nullable=False, autoincrement=True),
        sa.Column("workflow_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("completed_at", sa.BigInteger(), nullable=True),
        sa.Column("wake_at", sa.BigInteger(), nullable=True),
        sa.Column("executor_id", sa.String(200), nullable=True),
        sa.Column("result_token", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["workflow_id"], [named("workflows") + ".id"], name=named("fk_steps_workflow_id_workflows")
        ),
        sa.PrimaryKeyConstraint("id", name=named("pk_steps")),
        sa.UniqueConstraint("workflow_id", "number", name=named("uq_steps_workflow_id_number")),
    )
    op.create_index(
        named("ix_steps_running_workflow_id"),
        named("steps"),
        ["workflow_id"],
        postgresql_where=RUNNING,
        sqlite_where=RUNNING,
    )
    op.create_index(
        named("ix_steps_sleeping_wake_at"),
        named("steps"),
        ["wake_at"],
        postgresql_where=SLEEPING,
        sqlite_where=SLEEPING,
    )

    op.create_table(
        named("tasks"),
        sa.Column("id", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("workflow_created_at", sa.BigInteger(), nullable=False),
        sa.Column("workflow_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("initial_backoff", sa.Float(), nullable=False),
        sa.Column("backoff_multiplier", sa.Float(), nullable=False),
        sa.Column("max_backoff", sa.Float(), nullable=False),
        sa.Column("rate_limit_waits", sa.Integer(), nullable=False),
        sa.Column("max_rate_limit_waits", sa.Integer(), nullable=False),
        sa.Column("timeout", sa.Float(), nullable=True),
        sa.Column("available_at", sa.BigInteger(), nullable=False),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("claimed_at", sa.BigInteger(), nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["id"], [named("steps") + ".id"], name=named("fk_tasks_id_steps")),
        sa.PrimaryKeyConstraint("id", name=named("pk_tasks")),
    )
    op.create_index(named("ix_tasks_fifo"), named("tasks"), ["shard", "workflow_created_at", "id"])
    op.create_index(named("ix_tasks_claimed_by"), named("tasks"), ["claimed_by"])

    op.create_table(
        named("replay_queue"),
        sa.Column("workflow_id", sa.String(64), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("workflow_created_at", sa.BigInteger(), nullable=False),
        sa.Column("enqueued_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id"], [named("workflows") + ".id"], name=named("fk_replay_queue_workflow_id_workflows")
        ),
        sa.PrimaryKeyConstraint("workflow_id", name=named("pk_replay_queue")),
    )
    op.create_index(
        named("ix_replay_queue_fifo"), named("replay_queue"), ["workflow_created_at", "workflow_id"]
    )
    op.create_index(named("ix_replay_queue_shard"), named("replay_queue"), ["shard"])

    op.create_table(
        named("executors"),
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("task_kinds", sa.Text(), nullable=False),
        sa.Column("peer", sa.String(200), nullable=False),
        sa.Column("connected_at", sa.BigInteger(), nullable=False),
        sa.Column("last_heartbeat_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=named("pk_executors")),
    )
    op.create_table(
        named("shard_leases"),
        sa.Column("pool", sa.String(200), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("executor_id", sa.String(200), nullable=False),
        sa.Column("assigned_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("pool", "shard", name=named("pk_shard_leases")),
    )


def downgrade() -> None:
    for table in ("shard_leases", "executors", "replay_queue", "tasks", "steps", "workflows", "cluster"):
        op.drop_table(named(table))
