"""The reads behind ``WatchWorkflow``: what changed in the workflows people watch.

A watcher's first read is the whole workflow with its journal (:meth:`Workflows.get`). After
that only the part that can still change is read again: the workflow's row and its steps
from the first one not yet finished, plus the ids of its steps in progress (a step's id is
its task's id: a reported result names the task, and the watch learns from it which
workflow changed without a query).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..model import StepStatus
from .payloads import expanded_args
from .schema import steps, workflows
from .workflows import WORKFLOW_COLUMNS, StepRecord, WorkflowRecord, step_record, workflow_record

#: Ids per ``IN (...)`` list: far below every database's limit on bound parameters.
CHUNK = 500


@dataclass(frozen=True)
class WatchedState:
    """A workflow as it stands, with its steps from a given number on."""

    workflow: WorkflowRecord
    #: Its steps numbered ``from_step`` or more, in journal order.
    steps: tuple[StepRecord, ...]
    #: The ids of its steps still in progress (= their task ids).
    running_step_ids: frozenset[int]


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[start : start + CHUNK] for start in range(0, len(ids), CHUNK)]


def states(connection: Connection, from_step: Mapping[str, int]) -> dict[str, WatchedState]:
    """Each workflow of ``from_step`` (that still exists) with its steps from that number on."""
    rows = {}
    for chunk in _chunks(list(from_step)):
        for row in connection.execute(select(*WORKFLOW_COLUMNS).where(workflows.c.id.in_(chunk))):
            rows[row.id] = row
    found = {}
    for workflow_id, row in rows.items():
        step_rows = list(
            connection.execute(
                select(steps)
                .where(steps.c.workflow_id == workflow_id, steps.c.number >= from_step[workflow_id])
                .order_by(steps.c.number)
            )
        )
        args = expanded_args(connection, {s.number: (workflow_id, s.args) for s in step_rows})
        found[workflow_id] = WatchedState(
            workflow_record(row),
            tuple(step_record(s, args[s.number]) for s in step_rows),
            frozenset(s.id for s in step_rows if s.status == StepStatus.RUNNING),
        )
    return found


def versions(connection: Connection, workflow_ids: Collection[str]) -> dict[str, tuple[str, int]]:
    """Each workflow's (status, step count): a cheap look for changes no notification announced."""
    found = {}
    for chunk in _chunks(list(workflow_ids)):
        query = select(workflows.c.id, workflows.c.status, workflows.c.step_count).where(
            workflows.c.id.in_(chunk)
        )
        for row in connection.execute(query):
            found[row.id] = (row.status, row.step_count)
    return found
