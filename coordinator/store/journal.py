"""Finishing steps while keeping the replay-queue invariant.

A workflow advances as soon as any step it started finishes (see
:mod:`conveyor.coordinator.replay`). The invariant: a running workflow with a finished
step whose outcome is not delivered yet, or with no step in progress at all, has a
replay-queue row. Every transaction that finishes steps (results, timers, operator
force-fails) ends with :func:`enqueue_replays` for the workflows it touched, in the
same transaction, so the invariant holds at every commit; the replay's write removes
the row only once nothing is left to deliver.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert

from ..model import StepKind, StepStatus, WorkflowStatus, child_workflow_id
from ..replay import SETTLED
from .dialect import Dialect, insert_or_ignore
from .schema import FIFO_KEY, replay_queue, steps, tasks, workflows
from .wakeups import note_cancelled, note_replays_enqueued

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


def enqueue_replays(connection: Connection, dialect: Dialect, workflow_ids: Collection[str], now: int) -> int:
    """Give each running workflow in ``workflow_ids`` (a step of each just finished) a replay row.

    Returns how many workflows qualified (some may already have had a row).
    """
    return _enqueue(connection, dialect.insert_ignoring_duplicates(replay_queue), workflow_ids, now)


def _enqueue(connection: Connection, insert: Insert, workflow_ids: Collection[str], now: int) -> int:
    if not workflow_ids:
        return 0
    # The status is checked here rather than in SQL: a `status = 'running'` term let SQLite
    # walk the status index over every running workflow instead of looking up these ids.
    running = [
        row
        for row in connection.execute(
            select(workflows.c.id, workflows.c.shard, FIFO_KEY.label("fifo_key"), workflows.c.status).where(
                workflows.c.id.in_(list(workflow_ids))
            )
        )
        if row.status == WorkflowStatus.RUNNING
    ]
    if running:
        connection.execute(
            insert,
            [
                {
                    "workflow_id": row.id,
                    "shard": row.shard,
                    "workflow_created_at": row.fifo_key,
                    "enqueued_at": now,
                }
                for row in running
            ],
        )
        note_replays_enqueued(connection)
    return len(running)


def cancel_steps(
    connection: Connection, step_ids: Collection[int], reason: str, now: int, *, children_reason: str
) -> list[str]:
    """Cancel the running steps among ``step_ids`` for good (the workflow withdrew them, or finished
    without them): no replay delivers their outcome, their tasks leave the queue, and a result
    still in flight for them finds no task and is rejected as stale.

    A child step's child workflow is cancelled with it (``children_reason``), descendants included:
    nobody waits for it any more, and left running it would never end. Returns those workflows.
    """
    if not step_ids:
        return []
    ids = list(step_ids)
    children = [
        child_workflow_id(row.workflow_id, row.number)
        for row in connection.execute(
            select(steps.c.workflow_id, steps.c.number).where(
                steps.c.id.in_(ids), steps.c.status == StepStatus.RUNNING, steps.c.kind == StepKind.CHILD
            )
        )
    ]
    connection.execute(
        update(steps)
        .where(steps.c.id.in_(ids), steps.c.status == StepStatus.RUNNING)
        .values(status=StepStatus.CANCELLED, error=reason, completed_at=now, delivered_in=SETTLED)
    )
    connection.execute(delete(tasks).where(tasks.c.id.in_(ids)))
    # After the steps: a child cancelled now finds its parent's step no longer running, so it is not
    # delivered to a parent that stopped waiting for it.
    return cancel_workflows(connection, children, children_reason, now)


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
        note_cancelled(connection, cancelled)
        cancelled += settle_family(connection, cancelled, now)
    return cancelled


def settle_family(connection: Connection, finished_ids: Collection[str], now: int) -> list[str]:
    """What finishing ``finished_ids`` means for their families, in the same transaction.

    Their running children are cancelled (a child does not outlive its parent), and the parents
    waiting for any of them get the child's outcome on their child step and a replay. Returns the
    children cancelled (at any depth).
    """
    if not finished_ids:
        return []
    orphans = list(
        connection.execute(
            select(workflows.c.id).where(
                workflows.c.parent_id.in_(list(finished_ids)), workflows.c.status == WorkflowStatus.RUNNING
            )
        ).scalars()
    )
    cancelled = cancel_workflows(connection, orphans, "its parent workflow finished", now) if orphans else []
    _notify_parents(connection, finished_ids, now)
    return cancelled


def _notify_parents(connection: Connection, finished_ids: Collection[str], now: int) -> None:
    children = connection.execute(
        select(
            workflows.c.id,
            workflows.c.name,
            workflows.c.status,
            workflows.c.result,
            workflows.c.error,
            workflows.c.parent_id,
            workflows.c.parent_step,
        ).where(workflows.c.id.in_(list(finished_ids)), workflows.c.parent_id.is_not(None))
    ).all()
    if not children:
        return
    waiting = {
        (row.workflow_id, row.number): row.id
        for row in connection.execute(
            select(steps.c.id, steps.c.workflow_id, steps.c.number).where(
                steps.c.workflow_id.in_({child.parent_id for child in children}),
                steps.c.status == StepStatus.RUNNING,
            )
        )
    }
    completions = []
    parents = set()
    for child in children:
        step_id = waiting.get((child.parent_id, child.parent_step))
        if step_id is None:
            continue  # the parent finished (or was cancelled) first: nobody waits
        parents.add(child.parent_id)
        if child.status == WorkflowStatus.COMPLETED:
            completions.append(
                step_completion(step_id, StepStatus.COMPLETED, child.result or "null", None, now)
            )
        else:
            error = f"child workflow {child.id} ({child.name}) {child.status}: {child.error or 'no reason'}"
            completions.append(step_completion(step_id, StepStatus.FAILED, None, error[:4000], now))
    finish_steps(connection, completions)
    _enqueue(connection, insert_or_ignore(connection, replay_queue), parents, now)
