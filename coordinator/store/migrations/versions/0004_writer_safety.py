"""Tables of the writer's safety rules.

* ``write_commits``: the commit marker of the writer's last transaction, checked after
  a COMMIT of unknown outcome so the transaction's units are not applied twice.
* ``coordinator_holder``: who holds the database's exclusive coordinator lock, named in
  the refusal a second coordinator gets.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from conveyor.coordinator.store.namespace import migration_name as named

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        named("write_commits"),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("committed_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=named("pk_write_commits")),
    )
    op.create_table(
        named("coordinator_holder"),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=named("pk_coordinator_holder")),
    )


def downgrade() -> None:
    op.drop_table(named("coordinator_holder"))
    op.drop_table(named("write_commits"))
