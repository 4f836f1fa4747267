"""Purging finished workflows with every row that belongs to them (retention, ``PurgeWorkflows``).

A purge batch is one write unit: it picks the oldest finished workflows of the selection and
deletes them and their rows, so a batch is all or nothing and the next batch, after a crash
or a restart, simply picks what is still there. ``workflow_counts`` stays right by itself:
its triggers (:mod:`.counts`) count the deleted workflows out in the same transaction.

A table added later that holds rows of one workflow keyed by ``workflow_id`` joins
:data:`PURGED_WITH_WORKFLOW`, and is purged with it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, Table, delete, func, select
from sqlalchemy.engine import Connection

from ..model import WorkflowStatus
from .schema import blobs, replay_queue, signals, steps, tasks, workflows

#: The statuses a workflow never leaves: only these are purged.
FINISHED_STATUSES = (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)

#: Every table with rows of one workflow (in a ``workflow_id`` column), deleted before the
#: workflow itself, in this order (``tasks`` references ``steps``).
PURGED_WITH_WORKFLOW: tuple[Table, ...] = (tasks, replay_queue, steps, blobs, signals)


@dataclass(frozen=True)
class PurgeSelection:
    """Finished workflows of ``statuses`` whose ``completed_at`` is before ``finished_before`` (µs)."""

    finished_before: int
    statuses: tuple[WorkflowStatus, ...] = FINISHED_STATUSES

    def __post_init__(self) -> None:
        running = [status for status in self.statuses if status not in FINISHED_STATUSES]
        if running:
            raise ValueError(f"only finished workflows can be purged, not {running}")


def _oldest_of_status(status: WorkflowStatus, selection: PurgeSelection, limit: int) -> Select[Any]:
    # One status at a time: each reads the front of the (status, completed_at) index in order;
    # an IN over statuses would sort every expired workflow to return the first few.
    return (
        select(workflows.c.id, workflows.c.completed_at)
        .where(
            workflows.c.status == status.value,
            workflows.c.completed_at.is_not(None),
            workflows.c.completed_at < selection.finished_before,
        )
        .order_by(workflows.c.completed_at)
        .limit(limit)
    )


def oldest(connection: Connection, selection: PurgeSelection, limit: int) -> list[str]:
    """The ids of the ``limit`` workflows of ``selection`` that finished first."""
    candidates: list[tuple[int, str]] = []
    for status in selection.statuses:
        rows = connection.execute(_oldest_of_status(status, selection, limit))
        candidates.extend((row.completed_at, row.id) for row in rows)
    return [workflow_id for _completed_at, workflow_id in sorted(candidates)[:limit]]


def count(connection: Connection, selection: PurgeSelection, limit: int) -> int:
    """How many workflows ``selection`` holds (at most ``limit``; 0: no limit), from the index."""
    total = 0
    for status in selection.statuses:
        query = select(workflows.c.id).where(
            workflows.c.status == status.value,
            workflows.c.completed_at.is_not(None),
            workflows.c.completed_at < selection.finished_before,
        )
        if limit > 0:
            query = query.limit(limit)
        total += connection.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    return min(total, limit) if limit > 0 else total


def purge(connection: Connection, workflow_ids: Collection[str]) -> int:
    """Delete finished ``workflow_ids`` and all their rows; returns how many workflows went.

    A running workflow among them is left whole (its rows too): retention never races a
    workflow that is still making progress, whatever the caller picked.
    """
    if not workflow_ids:
        return 0
    finished = list(
        connection.execute(
            select(workflows.c.id).where(
                workflows.c.id.in_(list(workflow_ids)),
                workflows.c.status.in_([status.value for status in FINISHED_STATUSES]),
            )
        ).scalars()
    )
    if not finished:
        return 0
    for table in PURGED_WITH_WORKFLOW:
        connection.execute(delete(table).where(table.c.workflow_id.in_(finished)))
    return connection.execute(delete(workflows).where(workflows.c.id.in_(finished))).rowcount


def purge_oldest(connection: Connection, selection: PurgeSelection, limit: int) -> int:
    """One batch: purge the ``limit`` workflows of ``selection`` that finished first."""
    return purge(connection, oldest(connection, selection, limit))
