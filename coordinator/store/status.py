"""Read-only queries behind the status page: the latest failures and the FIFO staircase.

Both read a bounded number of rows through indexes (``workflows (status,
created_at)`` and ``(created_at)``, ``steps (workflow_id, number)``), so a page
left open costs the database little however many workflows it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..model import StepKind, WorkflowStatus
from .schema import steps, workflows

#: Journal entries drawn on the staircase: the ones that take time.
TIMED_STEP_KINDS = (StepKind.LLM, StepKind.TASK, StepKind.SLEEP)


@dataclass(frozen=True)
class Failure:
    workflow_id: str
    name: str
    error: str
    created_at: int
    completed_at: int | None


@dataclass(frozen=True)
class StepSpan:
    """One timed step of a staircase row; times are µs, None while not reached yet."""

    number: int
    name: str
    status: str
    #: When the step started (its task was enqueued, or its timer set).
    created_at: int
    #: When an executor began its latest attempt.
    started_at: int | None
    completed_at: int | None


@dataclass(frozen=True)
class StaircaseRow:
    workflow_id: str
    name: str
    status: str
    created_at: int
    completed_at: int | None
    steps: list[StepSpan]


def latest_failures(connection: Connection, limit: int) -> list[Failure]:
    """The most recently started workflows that failed, newest first."""
    rows = connection.execute(
        select(
            workflows.c.id,
            workflows.c.name,
            workflows.c.error,
            workflows.c.created_at,
            workflows.c.completed_at,
        )
        .where(workflows.c.status == WorkflowStatus.FAILED)
        .order_by(workflows.c.created_at.desc())
        .limit(limit)
    ).all()
    return [Failure(row.id, row.name, row.error or "", row.created_at, row.completed_at) for row in rows]


def staircase(connection: Connection, limit: int) -> list[StaircaseRow]:
    """The newest ``limit`` workflows in start order, each with its timed steps."""
    newest = connection.execute(
        select(
            workflows.c.id,
            workflows.c.name,
            workflows.c.status,
            workflows.c.created_at,
            workflows.c.completed_at,
        )
        .order_by(workflows.c.created_at.desc())
        .limit(limit)
    ).all()
    spans: dict[str, list[StepSpan]] = {row.id: [] for row in newest}
    if spans:
        for step in connection.execute(
            select(
                steps.c.workflow_id,
                steps.c.number,
                steps.c.name,
                steps.c.status,
                steps.c.created_at,
                steps.c.started_at,
                steps.c.completed_at,
            )
            .where(
                steps.c.workflow_id.in_(list(spans)), steps.c.kind.in_([k.value for k in TIMED_STEP_KINDS])
            )
            .order_by(steps.c.workflow_id, steps.c.number)
        ):
            spans[step.workflow_id].append(
                StepSpan(
                    step.number, step.name, step.status, step.created_at, step.started_at, step.completed_at
                )
            )
    return [
        StaircaseRow(row.id, row.name, row.status, row.created_at, row.completed_at, spans[row.id])
        for row in reversed(newest)
    ]
