"""What a run stored: the journal's bytes per workflow, read back from the coordinator's database."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from conveyor.coordinator.store.schema import steps, workflows


@dataclass(frozen=True)
class StoredWorkflow:
    #: Characters of every step's stored arguments, result and error, plus the workflow's own
    #: arguments and result (the text columns; the benchmark's content is ASCII, so also bytes).
    journal_bytes: int
    steps: int
    status: str
    result: Any
    #: Characters of the arguments of its latest step named ``last_step_name`` (0 if none): for
    #: an unfinished agent loop, the conversation it last sent.
    last_step_args_bytes: int = 0


def stored_workflows(database_url: str, name: str, last_step_name: str = "") -> dict[str, StoredWorkflow]:
    """Every ``name`` workflow's journal size, step count, status and decoded result, by id."""
    engine = sa.create_engine(database_url)
    step_bytes = (
        sa.func.length(steps.c.args)
        + sa.func.coalesce(sa.func.length(steps.c.result), 0)
        + sa.func.coalesce(sa.func.length(steps.c.error), 0)
    )
    try:
        with engine.connect() as connection:
            per_workflow = {
                row.workflow_id: (int(row.size or 0), int(row.step_count))
                for row in connection.execute(
                    sa.select(
                        steps.c.workflow_id,
                        sa.func.sum(step_bytes).label("size"),
                        sa.func.count().label("step_count"),
                    )
                    .join(workflows, workflows.c.id == steps.c.workflow_id)
                    .where(workflows.c.name == name)
                    .group_by(steps.c.workflow_id)
                )
            }
            latest = (
                sa.select(steps.c.workflow_id, sa.func.max(steps.c.number).label("number"))
                .join(workflows, workflows.c.id == steps.c.workflow_id)
                .where(workflows.c.name == name, steps.c.name == last_step_name)
                .group_by(steps.c.workflow_id)
                .subquery()
            )
            last_args = {
                row.workflow_id: int(row.size or 0)
                for row in connection.execute(
                    sa.select(steps.c.workflow_id, sa.func.length(steps.c.args).label("size")).join(
                        latest,
                        sa.and_(
                            latest.c.workflow_id == steps.c.workflow_id, latest.c.number == steps.c.number
                        ),
                    )
                )
            }
            rows = connection.execute(
                sa.select(workflows.c.id, workflows.c.status, workflows.c.args, workflows.c.result).where(
                    workflows.c.name == name
                )
            ).all()
    finally:
        engine.dispose()
    stored = {}
    for row in rows:
        size, count = per_workflow.get(row.id, (0, 0))
        own = len(row.args or "") + len(row.result or "")
        stored[row.id] = StoredWorkflow(
            size + own,
            count,
            row.status,
            json.loads(row.result) if row.result else None,
            last_args.get(row.id, 0),
        )
    return stored
