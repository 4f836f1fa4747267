"""Read-only queries behind ``Diagnose``: queue depths and the invariant checks.

Each check is one query in one read transaction, so it sees a single committed
state; since every write transaction preserves the invariants, a violation here
is a real one, not a race with in-flight work.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import ColumnElement, CompoundSelect, Select, and_, case, exists, func, not_, select, union
from sqlalchemy.engine import Connection

from ..model import EXECUTOR_STEP_KINDS, StepKind, StepStatus, WorkflowStatus
from ..replay import INSTANT_KINDS
from .schema import replay_queue, signals, steps, tasks, workflows


@dataclass(frozen=True)
class ShardDepth:
    shard: int
    queued: int
    delayed: int
    claimed: int
    #: Creation time of the oldest queued task's workflow.
    oldest_queued_created_at: int | None
    replay_depth: int


@dataclass(frozen=True)
class Violation:
    kind: str
    description: str
    count: int
    workflow_ids: list[str]


def shard_depths(connection: Connection, now: int) -> dict[int, ShardDepth]:
    unclaimed = tasks.c.claimed_by.is_(None)
    ready = and_(unclaimed, tasks.c.available_at <= now)
    rows = connection.execute(
        select(
            tasks.c.shard,
            func.sum(case((ready, 1), else_=0)).label("queued"),
            func.sum(case((and_(unclaimed, tasks.c.available_at > now), 1), else_=0)).label("delayed"),
            func.sum(case((unclaimed, 0), else_=1)).label("claimed"),
            func.min(case((ready, tasks.c.workflow_created_at), else_=None)).label("oldest"),
        ).group_by(tasks.c.shard)
    ).all()
    replays: dict[int, int] = {
        shard: count
        for shard, count in connection.execute(
            select(replay_queue.c.shard, func.count()).group_by(replay_queue.c.shard)
        )
    }
    depths = {
        row.shard: ShardDepth(
            row.shard,
            int(row.queued),
            int(row.delayed),
            int(row.claimed),
            row.oldest,
            replays.pop(row.shard, 0),
        )
        for row in rows
    }
    for shard, depth in replays.items():
        depths[shard] = ShardDepth(shard, 0, 0, 0, None, depth)
    return depths


def invariant_violations(
    connection: Connection, registered_names: Collection[str], max_ids: int
) -> list[Violation]:
    """Every broken invariant, with up to ``max_ids`` example workflow ids each."""
    running_step = exists().where(
        and_(steps.c.workflow_id == workflows.c.id, steps.c.status == StepStatus.RUNNING)
    )
    queued_replay = exists().where(replay_queue.c.workflow_id == workflows.c.id)
    # Through the partial index of undelivered steps (the term is spelled as in its predicate).
    undelivered_outcome = exists().where(
        and_(
            steps.c.workflow_id == workflows.c.id,
            steps.c.delivered_in.is_(None),
            steps.c.status != StepStatus.RUNNING,
            steps.c.kind.not_in([kind.value for kind in INSTANT_KINDS]),
        )
    )
    step_of_task_running = exists().where(
        and_(steps.c.id == tasks.c.id, steps.c.status == StepStatus.RUNNING)
    )
    task_of_step = exists().where(tasks.c.id == steps.c.id)

    def status_of(workflow_id: ColumnElement[str]) -> ColumnElement[str]:
        return select(workflows.c.status).where(workflows.c.id == workflow_id).scalar_subquery()

    checks: list[tuple[str, str, Select[tuple[str]] | CompoundSelect[tuple[str]]]] = [
        (
            "running_without_progress",
            "running workflows with no step in progress and no replay-queue entry: "
            "nothing will ever resume them",
            select(workflows.c.id).where(
                workflows.c.status == WorkflowStatus.RUNNING, ~running_step, ~queued_replay
            ),
        ),
        (
            "undelivered_without_replay",
            "running workflows with a finished step whose outcome was never delivered to the workflow "
            "code, and no replay-queue entry: they will not advance on it",
            # Workflows started before activations were recorded (activations NULL) advance the
            # old way, once nothing is in progress: the check above covers them.
            select(workflows.c.id).where(
                workflows.c.status == WorkflowStatus.RUNNING,
                workflows.c.activations.is_not(None),
                undelivered_outcome,
                ~queued_replay,
            ),
        ),
        (
            "running_step_without_task",
            "LLM/task steps in progress with no task in the queue: no executor will ever run them",
            select(steps.c.workflow_id).where(
                steps.c.status == StepStatus.RUNNING,
                steps.c.kind.in_([k.value for k in EXECUTOR_STEP_KINDS]),
                ~task_of_step,
            ),
        ),
        (
            "task_without_running_step",
            "tasks whose step is no longer in progress: they occupy the queue for nothing",
            select(tasks.c.workflow_id).where(~step_of_task_running),
        ),
        (
            "finished_with_pending_work",
            "finished workflows that still have tasks or a replay-queue entry",
            # Driven from the two queues (bounded by work in progress) into workflows by
            # primary key: asked from the workflows side, it read every finished workflow
            # and, without an index on tasks.workflow_id, scanned the tasks for each one.
            # A scalar subquery, not a join or EXISTS: both get flattened into a join, which
            # SQLite (no statistics) turned around and PostgreSQL ran as a hash join over
            # every workflow (340 ms at 1M); a scalar subquery is one key lookup per row.
            union(
                select(tasks.c.workflow_id.label("id")).where(
                    status_of(tasks.c.workflow_id) != WorkflowStatus.RUNNING
                ),
                select(replay_queue.c.workflow_id.label("id")).where(
                    status_of(replay_queue.c.workflow_id) != WorkflowStatus.RUNNING
                ),
            ),
        ),
        (
            "signal_not_delivered",
            "signal waits in progress while a signal of their name is buffered for their workflow: "
            "it should have been delivered",
            # Driven from the buffer (signals nothing has taken yet), bounded by what clients sent.
            select(signals.c.workflow_id).where(
                signals.c.step_number.is_(None),
                exists().where(
                    and_(
                        steps.c.workflow_id == signals.c.workflow_id,
                        steps.c.status == StepStatus.RUNNING,
                        steps.c.kind == StepKind.SIGNAL,
                        steps.c.name == signals.c.name,
                    )
                ),
            ),
        ),
        (
            "child_step_without_running_child",
            "child steps in progress whose child workflow has finished or does not exist: the "
            "parent should have been told",
            # Child steps are running steps of kind child: bounded by work in progress.
            select(steps.c.workflow_id).where(
                steps.c.status == StepStatus.RUNNING,
                steps.c.kind == StepKind.CHILD,
                ~exists().where(
                    and_(
                        workflows.c.parent_id == steps.c.workflow_id,
                        workflows.c.parent_step == steps.c.number,
                        workflows.c.status == WorkflowStatus.RUNNING,
                    )
                ),
            ),
        ),
        (
            "unregistered_workflow",
            "workflows waiting for a replay whose code this coordinator did not load (--workflows)",
            # From the replay queue into workflows by key, as above.
            select(replay_queue.c.workflow_id).where(
                not_(
                    select(workflows.c.name)
                    .where(workflows.c.id == replay_queue.c.workflow_id)
                    .scalar_subquery()
                    .in_(list(registered_names))
                )
            ),
        ),
    ]
    violations = []
    for kind, description, query in checks:
        subquery = query.subquery()
        count = connection.execute(select(func.count()).select_from(subquery)).scalar_one()
        if count:
            ids = list(connection.execute(select(subquery.c[0]).limit(max_ids)).scalars())
            violations.append(Violation(kind, description, count, ids))
    return violations
