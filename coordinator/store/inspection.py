"""Read-only facts about one workflow, for ``ExplainWorkflow``.

Everything is read in one snapshot (the caller's read transaction), so the facts
agree with each other: a step is either in the queue or claimed, never both, and a
workflow with nothing in progress (or an outcome to deliver) either has its replay-queue
row or breaks the invariant for real.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection

from ..model import ClaimOrder, StepKind, StepStatus, WorkflowStatus
from .schema import replay_queue, steps, tasks
from .signals import Signals
from .workflows import WorkflowRecord, Workflows


@dataclass(frozen=True)
class QueuedTask:
    """The queue row of an LLM or task step in progress."""

    #: "llm" or the handler kind.
    kind: str
    shard: int
    #: The attempt running now (when claimed) or next (when queued), from 1.
    attempt: int
    max_attempts: int
    rate_limit_waits: int
    max_rate_limit_waits: int
    #: Not claimable before this time (a retry backoff or rate-limit wait).
    available_at: int
    claimed_by: str | None
    claimed_at: int | None
    #: Why the previous attempt ended, while a retry is pending.
    last_error: str | None
    #: Unclaimed, claimable tasks of the same kind ahead of this one on its shard, in claim order.
    tasks_ahead: int
    #: The claimed attempt's start-to-close deadline.
    deadline_at: int | None = None


@dataclass(frozen=True)
class StepInProgress:
    number: int
    name: str
    kind: StepKind
    #: When a sleep step's timer fires, or a signal wait times out.
    wake_at: int | None
    #: None for sleeps and signal waits, and for an LLM/task step whose task is missing (a broken
    #: invariant).
    task: QueuedTask | None
    #: When the step was taken (a signal wait: since when it waits).
    created_at: int = 0


@dataclass(frozen=True)
class WorkflowFacts:
    workflow: WorkflowRecord
    #: Steps with status running, in journal order.
    in_progress: list[StepInProgress]
    in_replay_queue: bool
    #: Replay-queue entries of older workflows (replayed before this one).
    replay_queue_ahead: int
    #: (name, count) of the signals sent and not waited for yet, by the first sent of each name.
    buffered_signals: tuple[tuple[str, int], ...] = ()


def workflow_facts(
    connection: Connection,
    workflows: Workflows,
    workflow_id: str,
    now: int,
    claim_order: ClaimOrder = ClaimOrder.FIFO,
) -> WorkflowFacts:
    """What is stored about ``workflow_id`` right now; ``NotFound`` if there is no such workflow."""
    workflow = workflows.get(connection, workflow_id, include_steps=False)
    rows = connection.execute(
        select(
            steps.c.id,
            steps.c.number,
            steps.c.name,
            steps.c.kind,
            steps.c.wake_at,
            steps.c.created_at,
            tasks.c.kind.label("task_kind"),
            tasks.c.shard,
            tasks.c.workflow_created_at,
            tasks.c.attempt,
            tasks.c.max_attempts,
            tasks.c.rate_limit_waits,
            tasks.c.max_rate_limit_waits,
            tasks.c.available_at,
            tasks.c.claimed_by,
            tasks.c.claimed_at,
            tasks.c.deadline_at,
            tasks.c.last_error,
        )
        .outerjoin(tasks, tasks.c.id == steps.c.id)
        .where(steps.c.workflow_id == workflow_id, steps.c.status == StepStatus.RUNNING)
        .order_by(steps.c.number)
    ).all()
    in_progress = []
    for row in rows:
        task = None
        if row.task_kind is not None:
            ahead = 0
            if row.claimed_by is None:
                ahead = _tasks_ahead(connection, row, now, claim_order)
            task = QueuedTask(
                kind=row.task_kind,
                shard=row.shard,
                attempt=row.attempt,
                max_attempts=row.max_attempts,
                rate_limit_waits=row.rate_limit_waits,
                max_rate_limit_waits=row.max_rate_limit_waits,
                available_at=row.available_at,
                claimed_by=row.claimed_by,
                claimed_at=row.claimed_at,
                deadline_at=row.deadline_at if row.claimed_by is not None else None,
                last_error=row.last_error,
                tasks_ahead=ahead,
            )
        in_progress.append(
            StepInProgress(row.number, row.name, StepKind(row.kind), row.wake_at, task, row.created_at)
        )
    entry = connection.execute(
        select(replay_queue.c.workflow_created_at).where(replay_queue.c.workflow_id == workflow_id)
    ).first()
    ahead_in_replay = 0
    if entry is not None:
        ahead_in_replay = connection.execute(
            select(func.count())
            .select_from(replay_queue)
            .where(
                or_(
                    replay_queue.c.workflow_created_at < entry.workflow_created_at,
                    and_(
                        replay_queue.c.workflow_created_at == entry.workflow_created_at,
                        replay_queue.c.workflow_id < workflow_id,
                    ),
                )
            )
        ).scalar_one()
    running = workflow.status is WorkflowStatus.RUNNING
    buffered = tuple(Signals.buffered(connection, workflow_id)) if running else ()
    return WorkflowFacts(workflow, in_progress, entry is not None, ahead_in_replay, buffered)


def _tasks_ahead(connection: Connection, row: object, now: int, claim_order: ClaimOrder) -> int:
    """Claimable tasks an executor of this kind, leasing this shard, would be handed first."""
    task_id, created_at = row.id, row.workflow_created_at  # type: ignore[attr-defined]
    if claim_order is ClaimOrder.FIFO:
        before = or_(
            tasks.c.workflow_created_at < created_at,
            and_(tasks.c.workflow_created_at == created_at, tasks.c.id < task_id),
        )
    else:
        before = tasks.c.id < task_id
    return int(
        connection.execute(
            select(func.count())
            .select_from(tasks)
            .where(
                tasks.c.shard == row.shard,  # type: ignore[attr-defined]
                tasks.c.kind == row.task_kind,  # type: ignore[attr-defined]
                tasks.c.claimed_by.is_(None),
                tasks.c.available_at <= now,
                before,
            )
        ).scalar_one()
    )
