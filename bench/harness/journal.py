"""What a run stored: the journal's bytes per workflow, read back from the coordinator's database."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from conveyor.coordinator.store.payloads import expanded_args
from conveyor.coordinator.store.schema import blobs, steps, workflows


@dataclass(frozen=True)
class StoredWorkflow:
    #: Characters of every step's stored arguments, result and error, of the parts its compacted
    #: arguments refer to (``blobs``: body, digest and parent), plus the workflow's own arguments
    #: and result (the text columns; the benchmark's content is ASCII, so also bytes).
    journal_bytes: int
    steps: int
    status: str
    result: Any
    #: Bytes of what the latest step named ``last_step_name`` sent (0 if none), reassembled from
    #: its compacted form: its ``messages`` as compact JSON when it has them (for an unfinished
    #: agent loop, the conversation it last sent), else its whole canonical arguments.
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
            parts = {
                row.workflow_id: int(row.size or 0)
                for row in connection.execute(
                    sa.select(
                        blobs.c.workflow_id,
                        sa.func.sum(
                            sa.func.length(blobs.c.body)
                            + sa.func.length(blobs.c.digest)
                            + sa.func.coalesce(sa.func.length(blobs.c.parent), 0)
                        ).label("size"),
                    )
                    .join(workflows, workflows.c.id == blobs.c.workflow_id)
                    .where(workflows.c.name == name)
                    .group_by(blobs.c.workflow_id)
                )
            }
            last_stored = {
                row.workflow_id: (row.workflow_id, row.args)
                for row in connection.execute(
                    sa.select(steps.c.workflow_id, steps.c.args).join(
                        latest,
                        sa.and_(
                            latest.c.workflow_id == steps.c.workflow_id, latest.c.number == steps.c.number
                        ),
                    )
                )
            }
            last_args = {
                workflow_id: _sent_bytes(text)
                for workflow_id, text in expanded_args(connection, last_stored).items()
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
            size + parts.get(row.id, 0) + own,
            count,
            row.status,
            json.loads(row.result) if row.result else None,
            last_args.get(row.id, 0),
        )
    return stored


def _sent_bytes(args_json: str) -> int:
    args = json.loads(args_json)
    if isinstance(args, dict) and isinstance(args.get("messages"), list):
        return len(json.dumps(args["messages"], separators=(",", ":")).encode())
    return len(args_json.encode())
