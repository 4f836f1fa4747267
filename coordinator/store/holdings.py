"""Which executor holds which tasks: the ``claimed_by`` column read and released.

The coordinator's membership, dispatch, recovery and Diagnose all ask these questions;
the SQL for them lives here.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from .schema import tasks


def holders(connection: Connection) -> list[str]:
    """Every executor id that holds at least one task."""
    return list(
        connection.execute(
            select(tasks.c.claimed_by).where(tasks.c.claimed_by.is_not(None)).distinct()
        ).scalars()
    )


def held_by(connection: Connection, executor_id: str) -> int:
    """How many tasks ``executor_id`` holds."""
    return int(
        connection.execute(
            select(func.count()).select_from(tasks).where(tasks.c.claimed_by == executor_id)
        ).scalar_one()
    )


def held_per_executor(connection: Connection) -> dict[str, int]:
    """Tasks held, per executor that holds any."""
    return {
        executor_id: int(count)
        for executor_id, count in connection.execute(
            select(tasks.c.claimed_by, func.count())
            .where(tasks.c.claimed_by.is_not(None))
            .group_by(tasks.c.claimed_by)
        ).all()
    }


def release_unsent(connection: Connection, executor_id: str, task_ids: Sequence[int]) -> None:
    """Give back tasks claimed for ``executor_id`` that were never sent to it (it went away)."""
    connection.execute(
        update(tasks)
        .where(tasks.c.claimed_by == executor_id, tasks.c.id.in_(task_ids))
        .values(claimed_by=None, claimed_at=None)
    )
