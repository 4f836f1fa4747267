"""Start-to-close deadlines of claimed tasks, and the claims that other writes revoke.

A claim stamps ``tasks.deadline_at`` (see :class:`conveyor.coordinator.store.queue.TaskDeadlines`).
A live executor that never reports a task (a hung handler, a bug, a lost result)
would otherwise hold it for ever: :func:`expire_overdue` takes such tasks back and
treats the attempt as a retryable failure, so it spends an attempt and backs off per
the step's retry policy, or fails the step after its last attempt.

Every write that takes a task away from the executor running it (the deadline, a
cancelled workflow, a cleared queue, a lease moved) must tell that executor to stop
the attempt. :func:`claimed_tasks` and :func:`revoked_since` find those tasks
generically: the claims held before a write that no longer stand after it.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.engine import Connection

from .. import retries
from ..model import ErrorClass, StepStatus
from .dialect import Dialect
from .queue import _retry_state, _task_state_columns, take_back_attempts
from .schema import steps, tasks

#: The token of a cancel that stops every attempt of its task the executor runs (fencing
#: tokens are random and never 0; see CancelTasks in executor_service.proto).
ANY_ATTEMPT = 0
#: Overdue tasks taken back per write transaction; the loop comes back at once for more.
EXPIRY_BATCH = 500


@dataclass(frozen=True)
class Claim:
    """One attempt an executor holds: the task and the fencing token it runs under."""

    task_id: int
    executor_id: str
    fencing_token: int


@dataclass
class ExpiryOutcome:
    #: The attempts taken back, for their executors to be told to stop them.
    revoked: list[Claim] = field(default_factory=list)
    retried: int = 0
    failed: int = 0
    replays_enqueued: int = 0
    #: Earliest time a retried task becomes claimable, and the shards it is on.
    next_retry_at: int | None = None
    shards: set[int] = field(default_factory=set)
    #: The batch was full: more may be overdue.
    more: bool = False


def deadline_message(
    executor_id: str, attempt: int, timeout: float | None, default: float, grace: float
) -> str:
    allowed = f"its timeout of {timeout:g}s" if timeout else f"the default task timeout of {default:g}s"
    return (
        f"attempt {attempt} timed out: executor {executor_id!r} reported no result within {allowed} "
        f"plus {grace:g}s grace (start-to-close deadline); the coordinator took the task back"
    )


def earliest_deadline(connection: Connection) -> int | None:
    """The next deadline of a claimed task (read through the partial index)."""
    return connection.execute(
        select(tasks.c.deadline_at)
        .where(tasks.c.claimed_by.is_not(None), tasks.c.deadline_at.is_not(None))
        .order_by(tasks.c.deadline_at)
        .limit(1)
    ).scalar()


def expire_overdue(
    connection: Connection,
    dialect: Dialect,
    now: int,
    *,
    default_timeout: float,
    grace: float,
    rng: random.Random | None = None,
    limit: int = EXPIRY_BATCH,
) -> ExpiryOutcome:
    """Take back claimed tasks past their deadline: retry (spending an attempt) or fail them."""
    rng = rng or random.Random()
    outcome = ExpiryOutcome()
    rows = connection.execute(
        select(*_task_state_columns, tasks.c.timeout)
        .where(tasks.c.claimed_by.is_not(None), tasks.c.deadline_at <= now)
        .order_by(tasks.c.deadline_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    outcome.more = len(rows) == limit
    outcome.revoked = [Claim(row.id, row.claimed_by, row.fencing_token) for row in rows]
    verdicts = [
        retries.after_failure(
            _retry_state(row),
            ErrorClass.RETRYABLE,
            deadline_message(row.claimed_by, row.attempt, row.timeout, default_timeout, grace),
            None,
            rng,
        )
        for row in rows
    ]
    taken = take_back_attempts(connection, dialect, rows, verdicts, now)
    outcome.retried, outcome.failed = taken.retried, taken.failed
    outcome.replays_enqueued, outcome.shards = taken.replays_enqueued, taken.shards
    outcome.next_retry_at = taken.next_retry_at
    return outcome


def claimed_tasks(
    connection: Connection, *, workflow_id: str | None = None, task_ids: Collection[int] | None = None
) -> list[Claim]:
    """The claims standing now: every one, a workflow's, or those among ``task_ids``.

    Claimed tasks are bounded by the executors' total capacity (the ``claimed_by`` index).
    """
    query = select(tasks.c.id, tasks.c.claimed_by, tasks.c.fencing_token).where(
        tasks.c.claimed_by.is_not(None)
    )
    if workflow_id is not None:  # through the running steps' index: tasks has none on workflow_id
        running = select(steps.c.id).where(
            steps.c.workflow_id == workflow_id, steps.c.status == StepStatus.RUNNING
        )
        query = query.where(tasks.c.id.in_(running))
    claims = []
    chunks = [None] if task_ids is None else _chunks(sorted(task_ids))
    for chunk in chunks:
        statement = query if chunk is None else query.where(tasks.c.id.in_(chunk))
        claims += [Claim(row.id, row.claimed_by, row.fencing_token) for row in connection.execute(statement)]
    return claims


def moved_away(connection: Connection, executor_id: str, held: Collection[int]) -> list[Claim]:
    """Tasks an executor says it holds (reconnecting) that are no longer claimed by it.

    Its lease expired while it was away, or an operator or a deadline took them back: every
    attempt of them it still runs must stop (ANY_ATTEMPT: the coordinator does not know
    which token the executor holds, and none of them is current).
    """
    moved: list[Claim] = []
    for chunk in _chunks(sorted(set(held))):
        still_ours = set(
            connection.execute(
                select(tasks.c.id).where(tasks.c.id.in_(chunk), tasks.c.claimed_by == executor_id)
            ).scalars()
        )
        moved.extend(
            Claim(task_id, executor_id, ANY_ATTEMPT) for task_id in chunk if task_id not in still_ours
        )
    return moved


def _chunks(ids: list[int], size: int = 500) -> list[list[int]]:
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def revoked_since(connection: Connection, before: Sequence[Claim]) -> list[Claim]:
    """The claims of ``before`` that no longer stand: the task is gone, unclaimed, or claimed anew."""
    if not before:
        return []
    standing = set(claimed_tasks(connection, task_ids=[claim.task_id for claim in before]))
    return [claim for claim in before if claim not in standing]
