"""Leadership: ``conveyor_leadership``, the one row naming the coordinator that may write.

On PostgreSQL several coordinators may share a database: one leads, the others stand by.
The row holds the leader's term (raised by one at every takeover), its id and advertised
address (standbys send callers there) and the deadline by which it must renew; every
write transaction of the leader reads its term from this row first (see
``coordinator/store/leadership.py``). SQLite keeps its one coordinator (a file lock) and
never writes the row.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conveyor_leadership",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("term", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("address", sa.String(200), nullable=False),
        sa.Column("deadline_us", sa.BigInteger(), nullable=False),
        sa.Column("elected_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="conveyor_pk_leadership"),
    )


def downgrade() -> None:
    op.drop_table("conveyor_leadership")
