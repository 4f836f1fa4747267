"""Finishing steps while keeping the replay-queue invariant.

The invariant: a running workflow with no step in progress has a replay-queue row.
Every transaction that finishes steps (results, timers, operator force-fails) ends
with :func:`enqueue_idle_workflows` for the workflows it touched, in the same
transaction, so the invariant holds at every commit.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import and_, bindparam, delete, exists, select, update
from sqlalchemy.engine import Connection

from ..model import StepStatus, WorkflowStatus
from .dialect import Dialect
from .schema import replay_queue, steps, tasks, workflows

_finish_step = (
    update(steps)
    .where(steps.c.id == bindparam("step_id"), steps.c.status == StepStatus.RUNNING)
    .values(
        status=bindparam("status"),
        result=bindparam("result"),
        error=bindparam("error"),
        attempt=bindparam("attempt"),
        started_at=bindparam("started_at"),
        completed_at=bindparam("completed_at"),
        executor_id=bindparam("executor_id"),
        result_token=bindparam("result_token"),
    )
)


def finish_steps(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Record final outcomes; each row has the bind names of ``_finish_step``."""
    if rows:
        connection.execute(_finish_step, list(rows))


def step_completion(
    step_id: int, status: StepStatus, result: str | None, error: str | None, now: int
) -> dict[str, Any]:
    """The bind values of :func:`finish_steps` for a step the coordinator ends itself (no attempt):
    a timer firing, a signal arriving."""
    return {
        "step_id": step_id,
        "status": status,
        "result": result,
        "error": error,
        "attempt": 0,
        "started_at": None,
        "completed_at": now,
        "executor_id": None,
        "result_token": None,
    }


def enqueue_idle_workflows(
    connection: Connection, dialect: Dialect, workflow_ids: Collection[str], now: int
) -> int:
    """Give each running workflow in ``workflow_ids`` with no step in progress a replay row.

    Returns how many workflows qualified (some may already have had a row).
    """
    if not workflow_ids:
        return 0
    in_progress = exists().where(
        and_(steps.c.workflow_id == workflows.c.id, steps.c.status == StepStatus.RUNNING)
    )
    # The status is checked here rather than in SQL: a `status = 'running'` term let SQLite
    # walk the status index over every running workflow instead of looking up these ids.
    idle = [
        row
        for row in connection.execute(
            select(workflows.c.id, workflows.c.shard, workflows.c.created_at, workflows.c.status).where(
                workflows.c.id.in_(list(workflow_ids)), ~in_progress
            )
        )
        if row.status == WorkflowStatus.RUNNING
    ]
    if idle:
        connection.execute(
            dialect.insert_ignoring_duplicates(replay_queue),
            [
                {
                    "workflow_id": row.id,
                    "shard": row.shard,
                    "workflow_created_at": row.created_at,
                    "enqueued_at": now,
                }
                for row in idle
            ],
        )
    return len(idle)


def cancel_workflows(
    connection: Connection, workflow_ids: Collection[str], reason: str, now: int
) -> list[str]:
    """Cancel the running workflows among ``workflow_ids``; returns the ids cancelled.

    Their running steps are marked cancelled, their tasks and replay rows removed:
    results still in flight for them will find no task and be rejected as stale.
    """
    if not workflow_ids:
        return []
    ids = list(workflow_ids)
    cancelled = list(
        connection.execute(
            update(workflows)
            .where(workflows.c.id.in_(ids), workflows.c.status == WorkflowStatus.RUNNING)
            .values(status=WorkflowStatus.CANCELLED, error=reason, completed_at=now)
            .returning(workflows.c.id)
        ).scalars()
    )
    if cancelled:
        connection.execute(
            update(steps)
            .where(steps.c.workflow_id.in_(cancelled), steps.c.status == StepStatus.RUNNING)
            .values(status=StepStatus.CANCELLED, error=reason, completed_at=now)
        )
        connection.execute(delete(tasks).where(tasks.c.workflow_id.in_(cancelled)))
        connection.execute(delete(replay_queue).where(replay_queue.c.workflow_id.in_(cancelled)))
    return cancelled
